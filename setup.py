"""Packaging for dicomweb: a DICOMweb server on Twisted.

``twisted.plugins`` is listed as a package (without an ``__init__``) so that
``twistd`` finds the ``dicomweb`` plugin after ``pip install .``.
"""

from setuptools import setup

setup(
    name="dicomweb",
    version="0.1.0",
    description="A DICOMweb (STOW-RS, QIDO-RS, WADO-RS, WADO-URI) server on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "dicomweb",
        "dicomweb.auth",
        "dicomweb.dicom",
        "dicomweb.dimse",
        "dicomweb.io",
        "dicomweb.store",
        "dicomweb.web",
        "twisted.plugins",
    ],
    # py.typed: the package's annotations are meant for type checkers of its users (PEP 561)
    package_data={"dicomweb": ["py.typed"], "twisted.plugins": ["dicomweb_plugin.py"]},
    install_requires=[
        "twisted[tls,http2]>=24.7",  # http2: the h2 package, HTTP/2 over TLS by ALPN
        "klein>=24.8",
        "treq>=24.9",
        "pydicom>=3.0,<4",
        "pyopenssl>=24",
        "numpy>=1.26",
        "orjson>=3.9",
        "requests>=2.28",
        "prometheus-client>=0.20",
        "pillow>=10",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
        # HTJ2K encoding (OpenJPH): the release tested here, with htj2k_encode tlm/tilepart.
        "imagecodecs>=2026.3.6",
        "bcrypt>=4.1",
        "pyjwt[crypto]>=2.8",
        "pynetdicom>=2.1",
        "defusedxml>=0.7",
        # brotli compression of JSON/XML answers (dicomweb/web/compression.py); gzip alone without it
        "brotli>=1.1",
    ],
    entry_points={
        "console_scripts": ["dicomweb-import = dicomweb.importer:main", "dicomweb-admin = dicomweb.admin:main"],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "dicomweb-client>=0.60",
            "pydicom-data>=1.0",
            "hypothesis>=6",
            "psutil>=5.9",
            # mypy-zope lets mypy see zope interfaces (the reactor's, IResource...);
            # each release supports a bounded range of mypy, so both are pinned together
            "mypy>=2.4,<2.5",
            "mypy-zope>=1.0.17",
            "types-defusedxml>=0.7",
            "ruff>=0.17,<0.18",  # tests/test_lint.py runs it: a new release may add rules
            # drives Debian's /usr/bin/chromium in tests/e2e (its driver ships in the wheel)
            "playwright>=1.45",
            "httpx[http2]>=0.27",  # a real HTTP/2 client in tests/test_http2.py
        ],
    },
)
