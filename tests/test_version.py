"""The version is stated once: deploykit.__version__, which the installed metadata and --version read."""
from importlib.metadata import version

import deploykit


def test_installed_metadata_version_is_the_package_version():
    assert version("deploykit") == deploykit.__version__


def test_report_versions_name_the_package_version():
    from deploykit.core.report import tool_versions
    assert tool_versions()["deploykit"] == deploykit.__version__
