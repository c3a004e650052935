"""p11lens: PKCS#11 spy traces → typed call records → statistics → reports."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("p11lens")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
