"""Moving replicas between devices: fill holes, repair dispersion, pull towards quotas.

All the work is on numpy vectors over candidate moves; a move (partition p, replica r,
new device d) is valid when, after it, no tier holds more replicas of p than it may
(``max_rep``; at most one per device). Moves are found in randomised rounds: each round
pairs candidates with receivers, checks them all at once, and applies the valid ones
(one per partition, donors never below their quota). A per-replica Python fallback
handles whatever the rounds leave, which is little.
"""

from __future__ import annotations

import numpy as np

from .placement import LEVELS, Topology


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its key (stable order)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.searchsorted(sk, sk, side="left")
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - starts
    return rank


def _first_per_key(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True on the first occurrence of each key."""
    return _rank_within(keys) == 0


def binding_levels(max_rep: list[np.ndarray], replicas: int) -> list[int]:
    """The levels whose limits can refuse a move.

    A level whose every tier may hold all replicas never refuses. Below a level where every
    tier may hold only one replica, nothing is checked: two replicas in different zones are
    on different servers and devices too. Fewer levels, proportionally less work.
    """
    out = []
    implied = False
    for level, limits in enumerate(max_rep):
        if len(limits) == 0 or limits.min() >= replicas:
            continue
        # A zero limit (a tier without weight) is never implied by a level above.
        if not implied or limits.min() == 0:
            out.append(level)
        implied = implied or limits.max() <= 1
    return out or [len(max_rep) - 1]


class MoveEngine:
    """Mutable working state of one rebalance."""

    def __init__(self, topo: Topology, r2p2d: np.ndarray, quota: np.ndarray,
                 max_rep: list[np.ndarray], movable: np.ndarray, rng: np.random.Generator):
        self.topo = topo
        self.r2p2d = r2p2d  # int64 (replicas, parts), -1 marks a hole
        self.replicas, self.parts = r2p2d.shape
        self.quota = quota
        # Sentinel at the end: a tier -1 (hole) may hold "unlimited" (never matches anyway).
        self.max_rep = [np.concatenate((m, [1 << 30])) for m in max_rep]
        self.movable = movable  # partitions allowed to move under min_part_hours
        self.moved = np.zeros(self.parts, dtype=bool)
        self.rng = rng
        self.counts = self._count()
        self.weighted_ids = np.nonzero(topo.present & (topo.weight > 0))[0]
        self.tier32 = [t.astype(np.int32) for t in topo.tier_of]
        self.binding = binding_levels(max_rep, self.replicas)

    def _count(self) -> np.ndarray:
        flat = self.r2p2d.ravel()
        return np.bincount(flat[flat >= 0], minlength=self.topo.n_ids).astype(np.int64)

    # --- validity -------------------------------------------------------------------------
    def valid(self, p: np.ndarray, r: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Would putting replica r of partition p on device d keep every tier within limits?"""
        cur = self.r2p2d[:, p].copy()
        cur[r, np.arange(len(p))] = -1
        ok = np.ones(len(p), dtype=bool)
        for level in self.binding:
            tiers = self.tier32[level]
            t = tiers[d]
            cnt = (tiers[cur] == t).sum(axis=0)
            ok &= cnt < self.max_rep[level][t]
        return ok

    def _apply(self, p: np.ndarray, r: np.ndarray, d: np.ndarray) -> None:
        old = self.r2p2d[r, p]
        has_old = old >= 0
        np.subtract.at(self.counts, old[has_old], 1)
        np.add.at(self.counts, d, 1)
        self.r2p2d[r, p] = d
        self.moved[p] = True

    # --- mixing --------------------------------------------------------------------------
    def mix(self, passes: int = 1) -> None:
        """Swap devices between random partition pairs, where both stay valid.

        The striped initial layout pairs devices in fixed patterns (a device's partitions
        would all share the same few partner devices). Swaps keep every device's count and
        every tier limit, and spread each device's partners across the cluster, so a failed
        device's data is re-replicated from many peers and removing one device never
        forces extra moves.
        """
        for _ in range(passes):
            for r in range(self.replicas):
                perm = self.rng.permutation(self.parts)
                half = self.parts // 2
                a, b = perm[:half], perm[half:2 * half]
                rows = np.full(half, r)
                # The partner replica comes from any row: the stripes fill rows in tier
                # order, so swapping only within a row would keep light tiers paired
                # with heavy ones forever (and a removed light device's replicas could
                # then not refill the tiers that grow without extra moves).
                other = self.rng.integers(0, self.replicas, half)
                da, db = self.r2p2d[r, a], self.r2p2d[other, b]
                ok = self.valid(a, rows, db) & self.valid(b, other, da)
                self.r2p2d[r, a[ok]] = db[ok]
                self.r2p2d[other[ok], b[ok]] = da[ok]

    # --- dispersion repair -----------------------------------------------------------------
    def repair_dispersion(self, chunks: int = 32) -> int:
        """Lift replicas out of over-full tiers (movable partitions only); they become holes.

        Of a partition's replicas in an over-full tier, the one lifted is the one on the
        device furthest over its quota (Swift picks by parts wanted, too). Lifting by
        replica row instead drained whichever devices the striped layout had put in the
        last row: adding a second server to a one-server ring took one old disk from
        768 partitions to 29 and cost a second rebalance to even out. The partitions are
        taken in shuffled chunks, with each device's surplus updated between chunks, so
        one slightly fuller device does not give up every replica it shares.
        """
        lifted = 0
        cur = self.r2p2d
        needs = np.zeros(self.parts, dtype=bool)  # a replica in an over-full tier
        for level in self.binding:
            t = self.tier32[level][cur]  # (R, P)
            for r in range(self.replicas):
                mine = t[r]
                cnt = (t == mine).sum(axis=0)
                needs |= (mine >= 0) & (cnt > self.max_rep[level][mine])
        parts = np.nonzero(needs & self.movable & ~self.moved)[0]
        if not len(parts):
            return 0
        self.rng.shuffle(parts)
        for chunk in np.array_split(parts, min(chunks, len(parts))):
            surplus = self.counts - self.quota
            best_s = np.full(len(chunk), -np.inf)
            rows = np.full(len(chunk), -1, dtype=np.int64)
            sub = cur[:, chunk]
            for level in self.binding:
                t = self.tier32[level][sub]
                for r in range(self.replicas):
                    mine = t[r]
                    cnt = (t == mine).sum(axis=0)
                    over = (mine >= 0) & (cnt > self.max_rep[level][mine])
                    s = np.where(over, surplus[sub[r]], -np.inf)
                    better = over & (s > best_s)
                    rows[better] = r
                    best_s[better] = s[better]
            keep = rows >= 0
            p, r = chunk[keep], rows[keep]
            np.subtract.at(self.counts, cur[r, p], 1)
            self.r2p2d[r, p] = -1
            self.moved[p] = True
            lifted += len(p)
        return lifted

    # --- holes -----------------------------------------------------------------------------
    def fill_holes(self, attempts: int = 4) -> None:
        """Give every hole a device, preferring devices under quota.

        Random rounds can paint themselves into a corner (the last holes only fit devices
        already at quota, which then costs a pull later). If that happens, try again with
        fresh randomness and keep the attempt that overfilled the fewest devices.
        """
        hr, hp = np.nonzero(self.r2p2d < 0)
        if len(hp) == 0:
            return
        moved_before = self.moved.copy()
        best: tuple[int, np.ndarray] | None = None
        for attempt in range(attempts):
            over = self._fill_greedy() if attempt == 1 else self._fill_once()
            if over is None:
                continue
            if over == 0:
                return
            placed = self.r2p2d[hr, hp].copy()
            if best is None or over < best[0]:
                best = (over, placed)
            np.subtract.at(self.counts, placed, 1)
            self.r2p2d[hr, hp] = -1
            self.moved[:] = moved_before
        if best is None:
            return
        self.r2p2d[hr, hp] = best[1]
        np.add.at(self.counts, best[1], 1)
        self.moved[hp] = True

    def _fill_greedy(self, limit: int = 4_000_000) -> int | None:
        """Most-constrained hole first, to the valid under-quota device with most room.

        Slower than the rounds (a Python step per hole), so only a retry, and only when
        holes x short devices is small. Returns None when skipped.
        """
        hr, hp = np.nonzero(self.r2p2d < 0)
        short = self.weighted_ids[(self.quota - self.counts)[self.weighted_ids] > 0]
        if len(hp) == 0 or len(short) == 0 or len(hp) * len(short) > limit:
            return None
        n, m = len(hp), len(short)
        ok = self.valid(np.repeat(hp, m), np.repeat(hr, m), np.tile(short, n)).reshape(n, m)
        room = (self.quota - self.counts)[short].astype(np.int64)
        left = np.ones(n, dtype=bool)
        over = 0
        for _ in range(n):
            options = (ok & (room > 0)).sum(axis=1)
            options = np.where(left, options, np.iinfo(np.int64).max)
            i = int(np.argmin(options))
            p, r = int(hp[i]), int(hr[i])
            left[i] = False
            cand = np.nonzero(ok[i] & (room > 0))[0]
            if len(cand):
                cand = cand[self.valid(np.full(len(cand), p), np.full(len(cand), r),
                                       short[cand])]
            if len(cand):
                j = int(cand[np.argmax(room[cand])])
                self._apply(np.array([p]), np.array([r]), short[j:j + 1])
                room[j] -= 1
            else:
                over += self._place_one(p, r)
            same = left & (hp == p)
            if same.any():  # the partition changed: recheck its other holes
                k = np.nonzero(same)[0]
                ok[k] = self.valid(np.repeat(hp[k], m), np.repeat(hr[k], m),
                                   np.tile(short, len(k))).reshape(len(k), m)
        return over

    def _fill_once(self, max_rounds: int = 64) -> int:
        """One randomised fill; returns how many holes went to devices already at quota."""
        stalls = 0
        filled_p: list[np.ndarray] = []
        filled_r: list[np.ndarray] = []
        for _ in range(max_rounds):
            r, p = np.nonzero(self.r2p2d < 0)
            if len(p) == 0:
                return
            deficit = np.maximum(self.quota - self.counts, 0)
            offers = np.repeat(np.arange(len(deficit)), deficit)
            if len(offers) == 0:
                break
            pick = self.rng.permutation(len(p))
            r, p = r[pick], p[pick]
            first = _first_per_key(p)
            r, p = r[first], p[first]
            offers = self.rng.permutation(offers)
            n = min(len(p), len(offers))
            r, p, d = r[:n], p[:n], offers[:n]
            ok = self.valid(p, r, d)
            if ok.any():
                self._apply(p[ok], r[ok], d[ok])
                filled_p.append(p[ok])
                filled_r.append(r[ok])
                stalls = 0
            else:
                stalls += 1
                if stalls >= 3:
                    break
        fp = np.concatenate(filled_p) if filled_p else np.zeros(0, dtype=np.int64)
        fr = np.concatenate(filled_r) if filled_r else np.zeros(0, dtype=np.int64)
        r, p = np.nonzero(self.r2p2d < 0)
        over = 0
        for ri, pi in zip(r.tolist(), p.tolist(), strict=True):
            if not self._swap_into(pi, ri, fp, fr):
                over += self._place_one(pi, ri)
        return over

    def _swap_into(self, p: int, r: int, fp: np.ndarray, fr: np.ndarray) -> bool:
        """Place a hole that no under-quota device can validly take, at no extra movement.

        Find a hole filled earlier in this rebalance (on device d') whose device this hole
        may take, while that earlier replica can go on to a device still under quota. Both
        replicas were moving anyway, so the swap costs nothing.
        """
        short = self.weighted_ids[(self.quota - self.counts)[self.weighted_ids] > 0]
        if len(short) == 0 or len(fp) == 0:
            return False
        dprime = self.r2p2d[fr, fp]
        n = len(fp)
        ok = (fp != p) & self.valid(np.full(n, p), np.full(n, r), dprime)
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            return False
        idx = self.rng.permutation(idx)[: max(1, 200_000 // len(short))]
        cp = np.repeat(fp[idx], len(short))
        cr = np.repeat(fr[idx], len(short))
        cd = np.tile(short, len(idx))
        good = np.nonzero(self.valid(cp, cr, cd))[0]
        if len(good) == 0:
            return False
        k = good[0]
        self._apply(cp[k:k + 1], cr[k:k + 1], cd[k:k + 1])
        self._apply(np.array([p]), np.array([r]), dprime[idx[k // len(short)]:][:1])
        return True

    def _place_one(self, p: int, r: int) -> int:
        """Place one replica on the best device: valid if possible, then most under quota."""
        ids = self.weighted_ids
        cur = self.r2p2d[:, p].copy()
        cur[r] = -1
        on_partition = np.isin(ids, cur)
        score = np.zeros(len(ids), dtype=np.int64)
        for level in range(len(LEVELS)):
            tiers = self.topo.tier_of[level]
            t = tiers[ids]
            cnt = (tiers[cur][None, :] == t[:, None]).sum(axis=1)
            over = np.maximum(cnt + 1 - self.max_rep[level][t], 0)
            # Higher levels dominate: one extra replica in a region beats any number below.
            score = score * (self.replicas + 1) + over
        room = (self.quota[ids] - self.counts[ids]).astype(np.float64)
        room /= np.maximum(self.quota[ids], 1)
        jitter = self.rng.random(len(ids)) * 1e-9
        key = np.where(on_partition, np.inf, score.astype(np.float64) * 1e3 - room - jitter)
        best = int(np.argmin(key))
        if not np.isfinite(key[best]):
            raise RuntimeError("no device can take this replica")
        self._apply(np.array([p]), np.array([r]), np.array([ids[best]]))
        return int(self.counts[ids[best]] > self.quota[ids[best]])

    # --- chains of fresh replicas -----------------------------------------------------------
    def settle_fresh(self, old: np.ndarray, max_chains: int = 64, budget: int = 1_000_000
                     ) -> int:
        """Even out what the fill left over and under quota using only replicas that moved
        in this rebalance anyway (the holes just filled).

        The fill can leave device A one over quota while device B, one under, cannot take
        any of A's new replicas. A chain A -> X -> B often exists: one of A's new replicas
        goes to X and one of X's new replicas goes to B. Every step re-places a replica
        that was moving anyway, so the chain costs no movement, where a pull would move a
        replica that could have stayed (removing a device must move exactly its replicas).
        Returns how many chains were applied.
        """
        applied = 0
        for _ in range(max_chains):
            over = self.counts > self.quota
            under = np.zeros(self.topo.n_ids, dtype=bool)
            ids = self.weighted_ids
            under[ids] = self.counts[ids] < self.quota[ids]
            if not over.any() or not under.any():
                break
            fr, fp = np.nonzero((self.r2p2d != old) & (self.r2p2d >= 0))
            chain = self._fresh_chain(fr, fp, over, under, budget)
            if chain is None or not self._apply_chain(chain):
                break
            applied += 1
        return applied

    def _fresh_chain(self, fr: np.ndarray, fp: np.ndarray, over: np.ndarray,
                     under: np.ndarray, budget: int) -> list[tuple[int, int, int]] | None:
        """Breadth-first from the over-quota devices to an under-quota one, each hop one
        fresh replica moved validly; the moves (replica, partition, device) or None."""
        if len(fp) == 0:
            return None
        targets = self.weighted_ids
        dev_of = self.r2p2d[fr, fp]
        parent: dict[int, tuple[int, int] | None] = {int(d): None for d in np.nonzero(over)[0]}
        frontier = list(parent)
        while frontier:
            idx = np.nonzero(np.isin(dev_of, frontier))[0]
            if len(idx) == 0:
                return None
            cap = max(1, budget // max(len(targets), 1))
            if len(idx) > cap:
                idx = self.rng.choice(idx, cap, replace=False)
            n, m = len(idx), len(targets)
            ok = self.valid(np.repeat(fp[idx], m), np.repeat(fr[idx], m),
                            np.tile(targets, n)).reshape(n, m)
            ok &= ~np.isin(targets, list(parent))[None, :]
            frontier = []
            for i, j in zip(*np.nonzero(ok), strict=True):
                d = int(targets[j])
                if d in parent:
                    continue
                parent[d] = (int(idx[i]), int(dev_of[idx[i]]))
                frontier.append(d)
                if under[d]:
                    chain = []
                    while parent[d] is not None:
                        k, src = parent[d]
                        chain.append((int(fr[k]), int(fp[k]), d))
                        d = src
                    return chain
        return None

    def _apply_chain(self, chain: list[tuple[int, int, int]]) -> bool:
        """Apply a chain's moves, each re-checked (two hops may share a partition); on a
        refusal undo the ones applied and report failure."""
        done: list[tuple[int, int, int]] = []
        for r, p, d in chain:
            pa, ra, da = np.array([p]), np.array([r]), np.array([d])
            if not self.valid(pa, ra, da)[0]:
                for r2, p2, d2 in reversed(done):
                    self._apply(np.array([p2]), np.array([r2]), np.array([d2]))
                return False
            done.append((r, p, int(self.r2p2d[r, p])))
            self._apply(pa, ra, da)
        return True

    # --- balance ---------------------------------------------------------------------------
    def pull(self, max_rounds: int = 200) -> None:
        """Move movable replicas from devices over quota to devices under it."""
        flat = self.r2p2d.ravel()
        surplus = self.counts - self.quota
        cand = np.nonzero((surplus[flat] > 0) & np.tile(self.movable & ~self.moved,
                                                          self.replicas))[0]
        stalls = 0
        for rnd in range(max_rounds):
            surplus = self.counts - self.quota
            deficit = np.maximum(-surplus, 0)
            if deficit.sum() == 0 or len(cand) == 0:
                return
            if rnd % 8 == 7:
                p_c = cand % self.parts
                keep = (surplus[flat[cand]] > 0) & ~self.moved[p_c]
                cand = cand[keep]
                if len(cand) == 0:
                    return
            offers = self.rng.permutation(np.repeat(np.arange(len(deficit)), deficit))
            n = len(offers)
            if len(cand) <= n:
                c = self.rng.permutation(cand)
                offers = offers[: len(c)]
            else:
                c = cand[self.rng.choice(len(cand), n, replace=False)] if n * 4 > len(
                    cand) else cand[np.unique(self.rng.integers(0, len(cand), n))]
                offers = offers[: len(c)]
            r, p = c // self.parts, c % self.parts
            donor = flat[c]
            live = (surplus[donor] > 0) & ~self.moved[p]
            r, p, d, donor = r[live], p[live], offers[live], donor[live]
            ok = self.valid(p, r, d)
            r, p, d, donor = r[ok], p[ok], d[ok], donor[ok]
            keep = _first_per_key(p)
            r, p, d, donor = r[keep], p[keep], d[keep], donor[keep]
            keep = _rank_within(donor) < surplus[donor]
            r, p, d = r[keep], p[keep], d[keep]
            if len(p):
                self._apply(p, r, d)
                stalls = 0
            else:
                stalls += 1
                if stalls >= 4:
                    break
        self._pull_targeted(cand)

    def _pull_targeted(self, cand: np.ndarray, limit: int = 400_000) -> None:
        """Last pass: for each device still under quota, test every candidate against it."""
        flat = self.r2p2d.ravel()
        deficit = self.quota - self.counts
        for d in np.nonzero(deficit > 0)[0].tolist():
            surplus = self.counts - self.quota
            p_c = cand % self.parts
            cand = cand[(surplus[flat[cand]] > 0) & ~self.moved[p_c]]
            if len(cand) == 0:
                return
            c = cand if len(cand) <= limit else self.rng.choice(cand, limit, replace=False)
            r, p = c // self.parts, c % self.parts
            ok = self.valid(p, r, np.full(len(c), d))
            r, p, donor = r[ok], p[ok], flat[c[ok]]
            keep = _first_per_key(p)
            r, p, donor = r[keep], p[keep], donor[keep]
            keep = _rank_within(donor) < surplus[donor]
            r, p = r[keep], p[keep]
            take = int(self.quota[d] - self.counts[d])
            r, p = r[:take], p[:take]
            if len(p):
                self._apply(p, r, np.full(len(p), d))
