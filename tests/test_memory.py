"""ferclean.memory: the Arrow pool the dataset-issue search allocates from."""

from __future__ import annotations


def test_the_system_arrow_pool_is_used_inside_and_the_default_restored(monkeypatch):
    import pyarrow as pa

    from ferclean.memory import POOL_ENV, system_arrow_pool

    monkeypatch.delenv(POOL_ENV, raising=False)
    before = pa.default_memory_pool().backend_name
    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == "system"
        assert pa.array(list(range(1000))).sum().as_py() == 499500
    assert pa.default_memory_pool().backend_name == before
    monkeypatch.setenv(POOL_ENV, before)  # the user's choice wins
    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == before
