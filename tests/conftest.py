import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A private data_cache for the session, so tests never read or clobber the user's runs."""
    path = tmp_path_factory.mktemp("data_cache")
    old = os.environ.get("ACL_CACHE")
    os.environ["ACL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ACL_CACHE", None)
    else:
        os.environ["ACL_CACHE"] = old
