"""Element symbols and lookups."""

from typing import Iterable, List

from ase.data import atomic_numbers, chemical_symbols

#: index = atomic number; entry 0 is 'X' (padding / dummy)
SYMBOLS: List[str] = list(chemical_symbols)


def symbol(z: int) -> str:
    return SYMBOLS[z] if 0 < z < len(SYMBOLS) else f"Z={z}"


def format_elements(zs: Iterable[int]) -> str:
    return ", ".join(symbol(int(z)) for z in sorted(set(int(z) for z in zs)))


def atomic_number(key) -> int:
    """Atomic number from an int, a numeric string or an element symbol."""
    if isinstance(key, int):
        return key
    text = str(key).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text in atomic_numbers:
        return atomic_numbers[text]
    raise ValueError(f"not an element: {key!r}")
