"""End-to-end tests with real clients: the OHIF Viewer in headless Chromium (marker ``e2e``)."""
