"""The data-dict key names live in one module (aimnet2mult/nn/keys.py): nn/ and potential.py read
the entries through ``Key``, and a scripted function reads ``Key.X.value`` as a constant."""

import io
import re
import tokenize
from pathlib import Path

import torch

from aimnet2mult.nn.keys import Key

PACKAGE = Path(__file__).resolve().parent.parent / "aimnet2mult"


def test_every_key_is_unique_and_lower_case():
    values = [k.value for k in Key]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", v) for v in values)


def test_nn_and_potential_read_data_entries_through_key():
    """No string literal that is exactly a key name (messages and docstrings may mention them);
    a buffer name and a suffix test are not data entries."""
    names = {k.value for k in Key}
    offenders = []
    for path in sorted((PACKAGE / "nn").glob("*.py")) + [PACKAGE / "potential.py"]:
        if path.name == "keys.py":
            continue
        toks = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for n, t in enumerate(toks):
            if t.type != tokenize.STRING or not re.fullmatch(r"""(["'])[a-z_0-9]+\1""", t.string):
                continue
            if t.string[1:-1] in names and toks[n - 2].string not in ("register_buffer", "endswith"):
                offenders.append(f"{path.name}:{t.start[0]}: {t.line.strip()}")
    assert not offenders, "string keys instead of Key:\n" + "\n".join(offenders)


def test_torchscript_reads_key_values_as_constants():
    def coord_of(data: dict[str, torch.Tensor]) -> torch.Tensor:
        return data[Key.COORD.value] * 2.0

    scripted = torch.jit.script(coord_of)
    assert torch.equal(scripted({"coord": torch.ones(2, 3)}), torch.full((2, 3), 2.0))
    assert '"coord"' in scripted.code
