"""Profiles deployment: the durable event log and the nearline user state (features/profiles/store.py).

One replica owns the log and the snapshot (a single writer; see serving/config.yaml). Requests are
served from memory; a restart replays the log tail after the snapshot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ray import serve

from features import artifacts as A
from features.data import schema as S
from features.errors import UnknownReference, UnknownUser
from features.profiles.seed import PROFILE_SEED, seed_profiles, seeded_with
from features.profiles.store import ProfileStore
from features.retrieval.ranking import Mode, RankContext, context_for
from serving.http import quiet_client_errors
from serving.retriever import open_live_catalog
from serving.settings import Resolved, ServingConfig


@serve.deployment(name="Profiles")
class Profiles:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.cfg = cfg
        quiet_client_errors()  # unknown ids are answered as 404/422, not logged as failures
        self.params = cfg.profiles.params
        self.live = open_live_catalog(cfg, res, lexical=False)
        pc = cfg.profiles
        self.store = ProfileStore(Path(res.state_dir) / "profiles", self.params, self.live.catalog.lookup,
                                  pc.max_users_in_memory, pc.snapshot_every_events, pc.snapshot_every_s, pc.fsync,
                                  pc.limits)
        t0 = time.perf_counter()
        self.seeded = 0
        if pc.seed and self.store.seeded_from != res.features_dir:  # first start, or a newer features version
            users = A.read_parquet(A.join(res.features_dir, "users"))
            folded_with = seeded_with(res.features_dir)
            if PROFILE_SEED in users.columns and folded_with != self.params:
                print("Profiles: the features version folded its seed profiles with other profiles.params than "
                      "serving's; seeding from each user's recent interactions instead (set build_features' "
                      "profiles to serving's to seed every user's whole history)", flush=True)
            seeds = seed_profiles(users, self.live.catalog.lookup, self.params, folded_with)
            self.seeded = self.store.seed(seeds, res.features_dir)
        self.seed_s = time.perf_counter() - t0
        if self.store.torn:
            print(f"Profiles: event log had a torn tail, discarded: {self.store.torn}", flush=True)
        print(f"Profiles: replayed {self.store.stats['replayed']} logged events in {self.store.replay_s:.2f}s; "
              f"seeded {self.seeded} users in {self.seed_s:.1f}s", flush=True)

    def context(self, user_id: str | None, mode: Mode, now: float, query: str | None = None,
                query_emb: np.ndarray | None = None, context_item: str | None = None) -> tuple[RankContext, bool]:
        """(the request's RankContext, whether the user has a profile)."""
        prof = self.store.get(user_id) if user_id else None
        return context_for(mode, prof, now, self.params, query, query_emb, context_item), prof is not None

    def append(self, events: list[dict]) -> tuple[list[str], list[str]]:
        """Durably log the events, then fold them; returns (accepted event ids, duplicate ids).
        An event naming an item the catalog does not hold raises UnknownReference, and nothing
        of the request is logged."""
        self.live.sync()  # items upserted a moment ago are known
        for i, e in enumerate(events):
            item = e.get(S.ITEM_ID)
            if item is not None and item not in self.live.catalog.row:
                raise UnknownReference(f"[{i}].item_id: unknown item {item!r} (nothing in this request was logged; "
                                       "PUT /v1/items/{id} first)", f"[{i}].item_id")
        return self.store.append(events)

    def forget(self, user_id: str) -> dict:
        """Remove the user's profile, logged events and event ids; UnknownUser when there is none."""
        out = self.store.forget(user_id)
        if out is None:
            raise UnknownUser(f"user_id: unknown user {user_id!r}", "user_id")
        return out

    def info(self) -> dict:
        return {"users_in_memory": self.store.in_memory(), "logged_event_ids": self.store.known_event_ids(),
                "last_seq": self.store.log.last_seq, "applied_seq": self.store.applied_seq,
                "torn_tail": [t.__dict__ for t in self.store.torn], "seeded_from": self.store.seeded_from,
                **self.store.stats}

    def __del__(self) -> None:
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - best effort on shutdown; the log already holds every event
            pass
