"""Mixed-fidelity batch sampler.

Training (``shuffle=True``): every molecule slot of a batch draws its fidelity with probability
``weights[f] / sum(weights)``, then takes the next molecule of a per-fidelity stream (a random
permutation of that fidelity's molecules, reshuffled when exhausted). Over many batches the
fraction of molecules from fidelity ``f`` therefore matches its weight, whatever the dataset
sizes. Batches mix fidelities and molecule sizes.

* ``batch_mode="molecules"``: ``batch_size`` molecules per batch.
* ``batch_mode="atoms"``: molecules are added while the padded size ``n_molecules * max_atoms``
  stays within ``batch_size`` (a single molecule larger than the budget forms its own batch).
* ``batches_per_epoch=-1``: about one pass over the data: total molecules / batch size (molecules
  mode), or the number of batches that one pass of draws fills (atoms mode; computed once from the
  seed, so every epoch has the same length). A positive value is the number of batches of an epoch
  over all replicas.

Resuming mid-epoch: :meth:`skip_next` makes the next iteration start at a given batch of its epoch.

``paused_until_epoch`` ({fidelity: E}): that fidelity is not drawn in epochs 1..E (the other
fidelities' weights are renormalised); epochs count from 1 as :class:`~aimnet2mult.train.engine.EpochData`
sets them. Used for low-fidelity pretraining (:mod:`aimnet2mult.train.fidelity_init`).

Determinism: the batches of an epoch depend only on ``(seed, epoch)``. :meth:`set_epoch` selects
the epoch; an iteration without a preceding ``set_epoch`` uses the epoch after the previous
iteration's (so consecutive epochs differ even if ``set_epoch`` is never called). The epoch is read
when the first batch is requested.

Distributed (``num_replicas > 1``): all ranks build the same global batch list; rank ``r`` takes
batches ``r, r + R, r + 2R, ...``; every rank gets ``max(1, n_global // R)`` batches.

Validation (``shuffle=False``): every molecule exactly once, fidelity by fidelity (ascending), in
size-sorted order (stable) to limit padding, batched by ``batch_mode``/``batch_size``; weights and
``batches_per_epoch`` are ignored. With several replicas, rank ``r`` takes batches ``r::R`` (shares
are disjoint and together cover every molecule; counts may differ by one).
"""

import math
from typing import Iterator, List, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..model_config import ConfigError

BATCH_MODES = ("molecules", "atoms")


def _as_weights(weights: Optional[Mapping], fids: Sequence[int], check_known: bool) -> np.ndarray:
    weights = dict(weights or {})
    out = {}
    for key, value in weights.items():
        try:
            f = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"fidelity_weights: key {key!r} is not a fidelity index") from None
        if isinstance(value, bool):
            raise ConfigError(f"fidelity_weights.{f}: {value!r} is not a number")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"fidelity_weights.{f}: {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"fidelity_weights.{f} must be positive, or 0 (validation only), got {value!r}")
        if check_known and f not in fids:
            raise ConfigError(f"fidelity_weights names fidelity {f}, but the data has fidelities "
                              f"{list(fids)}")
        out[f] = w
    w = np.array([out.get(f, 1.0) for f in fids], dtype=np.float64)
    if len(w) and check_known and not (w > 0).any():
        raise ConfigError("fidelity_weights: every fidelity has weight 0; at least one must be drawn")
    return w


class _Streams:
    """Per-fidelity shuffled molecule streams and weighted fidelity draws from one generator."""

    def __init__(self, rng: np.random.Generator, pools: List[np.ndarray], probs: np.ndarray):
        self.rng = rng
        self.pools = pools
        self.probs = probs
        self.buf = [np.empty(0, dtype=np.int64) for _ in pools]

    def _take(self, k: int, count: int) -> np.ndarray:
        buf = self.buf[k]
        while len(buf) < count:
            buf = np.concatenate([buf, self.rng.permutation(self.pools[k])])
        self.buf[k] = buf[count:]
        return buf[:count]

    def draw(self, n: int) -> np.ndarray:
        """Next ``n`` molecules (global indices)."""
        fid = self.rng.choice(len(self.pools), size=n, p=self.probs)
        out = np.empty(n, dtype=np.int64)
        for k in range(len(self.pools)):
            pos = np.nonzero(fid == k)[0]
            if len(pos):
                out[pos] = self._take(k, len(pos))
        return out


def _pack_atoms(order: np.ndarray, n_atoms: np.ndarray, budget: int) -> List[np.ndarray]:
    """Greedy batches of ``order`` with padded size (n_mol * max atoms) <= budget."""
    batches = []
    start, cur_max = 0, 0
    sizes = n_atoms[order]
    for pos in range(len(order)):
        na = int(sizes[pos])
        m = max(cur_max, na)
        if pos > start and (pos - start + 1) * m > budget:
            batches.append(order[start:pos])
            start, m = pos, na
        cur_max = m
    if len(order) > start:
        batches.append(order[start:])
    return batches


class MixedFidelityBatchSampler(Sampler):
    """Batches (lists of global indices) of a :class:`MixedFidelityDataset`; see the module docstring."""

    def __init__(self, fidelity_of, n_atoms, weights: Optional[Mapping[int, float]] = None, batch_size: int = 32,
                 batch_mode: str = "molecules", batches_per_epoch: int = -1, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, paused_until_epoch: Optional[Mapping[int, int]] = None):
        super().__init__()
        self.fidelity_of = np.asarray(fidelity_of, dtype=np.int64).reshape(-1)
        self.n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
        if len(self.fidelity_of) != len(self.n_atoms):
            raise ValueError(f"fidelity_of ({len(self.fidelity_of)}) and n_atoms ({len(self.n_atoms)}) "
                             "must have the same length")
        if batch_mode not in BATCH_MODES:
            raise ConfigError(f"batch_mode must be one of {', '.join(BATCH_MODES)}, got {batch_mode!r}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(batches_per_epoch, bool) or int(batches_per_epoch) != batches_per_epoch or \
                (int(batches_per_epoch) < 1 and int(batches_per_epoch) != -1):
            raise ConfigError(f"batches_per_epoch must be -1 (one pass) or a positive integer, "
                              f"got {batches_per_epoch!r}")
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.batch_size = int(batch_size)
        self.batch_mode = batch_mode
        self.batches_per_epoch = int(batches_per_epoch)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.fidelities = [int(f) for f in np.unique(self.fidelity_of)]
        self.pools = [np.nonzero(self.fidelity_of == f)[0].astype(np.int64) for f in self.fidelities]
        w = _as_weights(weights, self.fidelities, check_known=self.shuffle)
        self.weights = {f: float(x) for f, x in zip(self.fidelities, w)}
        self.probs = w / w.sum() if len(w) else w
        self.paused_until_epoch = {int(f): int(e) for f, e in (paused_until_epoch or {}).items()}
        unknown = sorted(set(self.paused_until_epoch) - set(self.fidelities))
        if unknown:
            raise ValueError(f"paused_until_epoch names fidelities {unknown} without data (have {self.fidelities})")
        if self.shuffle and self.paused_until_epoch and set(self.paused_until_epoch) >= set(self.fidelities):
            raise ConfigError("every fidelity is paused at the start: at least one must be drawn")
        if self.shuffle and len(self.fidelity_of) == 0:
            raise ValueError("cannot sample training batches from an empty dataset")
        self._cache_key = None
        self._cache: List[np.ndarray] = []
        self._n_global: Optional[int] = None
        self._skip = 0

    # -- epochs ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (batches depend only on seed and epoch)."""
        self.epoch = int(epoch)

    def epoch_probs(self, epoch: int) -> np.ndarray:
        """Fidelity draw probabilities of ``epoch``: fidelities paused until epoch >= ``epoch`` get 0."""
        w = self.probs.copy()
        for k, f in enumerate(self.fidelities):
            if epoch <= self.paused_until_epoch.get(f, -1):
                w[k] = 0.0
        return w / w.sum()

    def _streams(self, epoch: int) -> _Streams:
        return _Streams(np.random.default_rng([self.seed, epoch]), self.pools, self.epoch_probs(epoch))

    def _batches_from(self, streams: _Streams, n_batches: Optional[int] = None,
                      n_molecules: Optional[int] = None) -> List[np.ndarray]:
        """Draw ``n_batches`` batches, or the batches filled by ``n_molecules`` draws."""
        if self.batch_mode == "molecules":
            if n_batches is None:
                n_batches = max(1, math.ceil(n_molecules / self.batch_size))
            flat = streams.draw(n_batches * self.batch_size)
            return [flat[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n_batches)]
        if n_batches is None:
            return _pack_atoms(streams.draw(n_molecules), self.n_atoms, self.batch_size)
        batches: List[np.ndarray] = []
        pending = np.empty(0, dtype=np.int64)
        chunk = max(256, 2 * n_batches * max(1, self.batch_size // max(1, int(self.n_atoms.mean()))))
        while len(batches) < n_batches:
            seq = np.concatenate([pending, streams.draw(chunk)])
            packed = _pack_atoms(seq, self.n_atoms, self.batch_size)
            # the last packed batch may still grow: carry it over to the next chunk
            batches.extend(packed[:-1])
            pending = packed[-1]
        return batches[:n_batches]

    def _global_count(self) -> int:
        if self._n_global is None:
            if self.batches_per_epoch > 0:
                self._n_global = self.batches_per_epoch
            elif self.batch_mode == "molecules":
                self._n_global = max(1, math.ceil(len(self.fidelity_of) / self.batch_size))
            else:  # one pass of draws, from a generator that no epoch uses
                streams = _Streams(np.random.default_rng([self.seed, 2 ** 32 - 1, 1]), self.pools, self.probs)
                self._n_global = len(self._batches_from(streams, n_molecules=len(self.fidelity_of)))
        return self._n_global

    def _per_rank(self) -> int:
        return max(1, self._global_count() // self.num_replicas)

    def epoch_batches(self, epoch: int) -> List[np.ndarray]:
        """All batches of an epoch over all replicas (rank r gets entries r::num_replicas)."""
        key = epoch if self.shuffle else "validation"
        if self._cache_key == key:
            return self._cache
        if self.shuffle:
            batches = self._batches_from(self._streams(epoch), n_batches=self._per_rank() * self.num_replicas)
        else:
            batches = self._validation_batches()
        self._cache_key, self._cache = key, batches
        return batches

    def _validation_batches(self) -> List[np.ndarray]:
        batches: List[np.ndarray] = []
        for pool in self.pools:
            order = pool[np.argsort(self.n_atoms[pool], kind="stable")]
            if self.batch_mode == "molecules":
                batches.extend(order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size))
            else:
                batches.extend(_pack_atoms(order, self.n_atoms, self.batch_size))
        return batches

    # -- Sampler interface -------------------------------------------------------------------
    def skip_next(self, n_batches: int) -> None:
        """Make the next iteration start at its batch ``n_batches`` (resuming mid-epoch: the batches
        already trained on are not drawn again)."""
        if n_batches < 0 or n_batches >= len(self):
            raise ValueError(f"cannot skip {n_batches} of the {len(self)} batches of an epoch")
        self._skip = int(n_batches)

    def __iter__(self) -> Iterator[List[int]]:
        epoch = self.epoch
        self.epoch = epoch + 1
        batches = self.epoch_batches(epoch)
        mine = batches[self.rank::self.num_replicas]
        if self.shuffle:
            mine = mine[:self._per_rank()]
        skip, self._skip = self._skip, 0
        for b in mine[skip:]:
            yield [int(i) for i in b]

    def __len__(self) -> int:
        if self.shuffle:
            return self._per_rank()
        return len(range(self.rank, len(self.epoch_batches(0)), self.num_replicas))
