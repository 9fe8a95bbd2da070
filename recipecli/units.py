"""Byte units, shared by the arithmetic and the reports without importing either."""
GIB = 1 << 30
MIB = 1 << 20


def gib(n: float) -> str:
    """Bytes for people: 8589934592 -> '8.00 GiB'."""
    return f"{n / GIB:.2f} GiB"
