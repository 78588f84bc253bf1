"""The v1 endpoints. Built inside the app factory, so limits from the settings are part of the
validation (and of the OpenAPI document) without anything being configured at import time.

Hot paths return ``JSONResponse`` directly: the declared ``response_model`` documents the shape,
while skipping FastAPI's second validation pass over our own output saves ~10% per request.

No ``from __future__ import annotations`` here: FastAPI must evaluate the parameter annotations,
and some of them use values (limits) that only exist inside ``build_router``.
"""

import asyncio
import functools
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from shopformer.recommender import (
    ArtifactError,
    History,
    Reason,
    Recommendations,
    RecRequest,
    UnknownBehaviourError,
    describe_reasons,
)
from shopformer.serving.auth import dependencies
from shopformer.serving.batching import BatcherClosed
from shopformer.serving.engine import Engine
from shopformer.serving.middleware import VERSION_KEY
from shopformer.serving.reload import resolve_run_dir, scrub
from shopformer.serving.schemas import (
    BEHAVIOUR_QUERY_DOC,
    EXPLAIN_DOC,
    MIN_NEW_SHARE_DOC,
    AdHocRequest,
    ErrorOut,
    EventBatch,
    EventsAck,
    ForgetOut,
    HealthOut,
    RecommendationsOut,
    ReloadIn,
    ReloadOut,
    SimilarOut,
)
from shopformer.serving.settings import ServeSettings
from shopformer.serving.state import ServiceState
from shopformer.serving.store import StoredEvent

log = logging.getLogger(__name__)

UserId = Annotated[str, Path(min_length=1, max_length=256)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed JSON"},
    413: {"model": ErrorOut, "description": "body larger than the server's byte limit"},
    422: {"model": ErrorOut, "description": "validation error; `detail[].loc` names the field"},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing bearer token"},
    403: {"model": ErrorOut, "description": "wrong token, or no key configured on the server for this scope"},
}
STORE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "state store unavailable (down, loading, full): retry after "
          "the Retry-After header's seconds"},
}


def field_error(status: int, loc: list[str | int], msg: str, kind: str) -> HTTPException:
    return HTTPException(status, [{"loc": loc, "msg": msg, "type": kind}])


def state(request: Request) -> ServiceState:
    return request.app.state.svc


def respond(request: Request, engine: Engine, payload: dict[str, Any], status: int = 200) -> JSONResponse:
    """Every answer names the model version that produced it (body and x-model-version header)."""
    request.scope[VERSION_KEY] = engine.version
    payload["model_version"] = engine.version
    return JSONResponse(payload, status_code=status)


def recs_payload(rec: Recommendations, reason: str | None, history_length: int, user_id: str | None,
                 reasons: list[list[Reason]] | None = None) -> dict:
    items = [{"item_id": i, "score": s, "repeat": r} for i, s, r in zip(rec.items, rec.scores, rec.repeat, strict=True)]
    for item, why in zip(items, reasons or [], strict=False):  # explain=true only
        item["explanation"] = describe_reasons(why)
        item["reasons"] = [{"item_id": x.item, "behaviour": x.behaviour, "position": x.position, "weight": x.weight}
                           for x in why]
    return {
        "user_id": user_id,
        "items": items,
        "fallback": rec.fallback,
        "fallback_reason": reason if rec.fallback else None,
        "skipped_items": rec.skipped,
        "skipped_behaviours": rec.skipped_behaviours,
        "history_length": history_length,
    }


def check_behaviour(engine: Engine, behaviour: str | None, loc: list[str | int]) -> None:
    """A ranking query's behaviour through the one resolver (``Recommender.behaviour_id``): an
    unknown name is a 422 listing the known ones, never a fallback to another type."""
    if behaviour is None:
        return
    try:
        engine.rec.behaviour_id(behaviour)
    except UnknownBehaviourError as err:
        raise field_error(422, loc, f"model {engine.version}: {err}", "behaviour_unknown") from None
    except ValueError as err:
        raise field_error(422, loc, f"model {engine.version} cannot rank for behaviour {behaviour!r}: {err}",
                          "behaviour_unsupported") from None


async def explain_items(engine: Engine, hist: History | None, rec: Recommendations, behaviour: str | None,
                        recent: int | None) -> list[list[Reason]]:
    """?explain=true: each item's reasons (``Recommender.explain``) on the engine that ranked it; none
    for a popularity answer. Runs where that engine's forward passes run (loop or inference thread).
    ``recent``: occlude the last N events only (0 / None: the model's whole window)."""
    if hist is None or rec.fallback or not rec.items:
        return [[] for _ in rec.items]
    call = functools.partial(engine.rec.explain, hist, rec.items, 3, behaviour, recent or None)
    if engine.executor is None:
        return call()
    return await asyncio.get_running_loop().run_in_executor(engine.executor, call)


async def recommend(svc: ServiceState, req: RecRequest) -> tuple[Engine, Recommendations]:
    """Micro-batched top-k on the current engine; a request that raced a reload moves to the new one."""
    for _ in range(3):
        engine = svc.engine
        try:
            return engine, await engine.recommend(req)
        except BatcherClosed:
            continue
    raise HTTPException(503, "model is being reloaded; retry", headers={"Retry-After": str(svc.settings.retry_after_s)})


def build_router(settings: ServeSettings) -> APIRouter:
    router = APIRouter()
    ingest, admin, read = (dependencies(settings, scope) for scope in ("ingest", "admin", "read"))
    read_errors = {**ERRORS, **AUTH_ERRORS} if read else ERRORS
    max_k = settings.max_k
    reload_root = settings.effective_reload_root()

    @router.post("/v1/events", response_model=EventsAck, dependencies=ingest, tags=["events"],
                 responses={**ERRORS, **AUTH_ERRORS, **STORE_ERRORS})
    async def post_events(batch: EventBatch, request: Request) -> JSONResponse:
        """Store a batch of events; answered only once they are durable. Retries are safe with event_id.
        A batch is validated whole and stored whole, or not at all."""
        svc = state(request)
        if len(batch.events) > settings.max_events_per_batch:
            raise field_error(422, ["body", "events"], f"at most {settings.max_events_per_batch} events per batch "
                              f"(got {len(batch.events)})", "too_long")
        engine = svc.engine
        now = int(time.time())
        events = [
            StoredEvent(svc.user_key(e.user_id), e.item_id, now if e.timestamp is None else e.timestamp,
                        e.behaviour, svc.field_key(e.session_id, "session_id"), e.category_id, e.price,
                        svc.field_key(e.event_id, "event_id"))  # pseudonyms with a key (state.py)
            for e in batch.events
        ]
        kept = [e for e in events if not svc.forgotten_before(e.user_id, e.timestamp)]
        res = await svc.store.append(kept, engine.max_len)
        unknown = [e.item_id for e in kept if not engine.knows_item(e.item_id)]
        odd = [e.behaviour for e in kept if e.behaviour is not None and not engine.knows_behaviour(e.behaviour)]
        svc.metrics.events.labels("applied").inc(res.applied)
        svc.metrics.events.labels("duplicate").inc(len(res.duplicates))
        svc.metrics.events.labels("unknown_item").inc(len(unknown))
        svc.metrics.events.labels("unknown_behaviour").inc(len(odd))
        svc.metrics.events.labels("forgotten").inc(len(events) - len(kept))
        svc.online.ingested(svc.store, svc.spawn, kept, len(unknown))  # drift + online hit rate (online.py)
        sent = {k.event_id: e.event_id for k, e in zip(events, batch.events, strict=True)}  # kept id -> as sent
        return respond(request, engine, {"accepted": res.applied, "duplicates": len(res.duplicates),
                                         "duplicate_event_ids": [sent.get(d, d) for d in res.duplicates],
                                         "unknown_items": sorted(set(unknown)),
                                         "unknown_behaviours": sorted(set(odd)),
                                         "forgotten": len(events) - len(kept)})

    @router.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut, tags=["recommendations"],
                dependencies=read, responses={**read_errors, **STORE_ERRORS})
    async def user_recommendations(
        request: Request,
        user_id: UserId,
        k: Annotated[int, Query(ge=1, le=max_k)] = 10,
        exclude_seen: bool | None = None,
        behaviour: Annotated[str | None, Query(min_length=1, max_length=256, description=BEHAVIOUR_QUERY_DOC)] = None,
        min_new_share: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False,
                                                     description=MIN_NEW_SHARE_DOC)] = None,
        explain: Annotated[bool, Query(description=EXPLAIN_DOC)] = False,
    ) -> JSONResponse:
        """Top-k from the user's stored history; unknown users get the popularity ranking (fallback).
        Each item says whether it is a repeat (in the stored history) or a discovery."""
        svc = state(request)
        check_behaviour(svc.engine, behaviour, ["query", "behaviour"])
        stored = await svc.store.history(svc.user_key(user_id), svc.engine.max_len)  # pseudonym with a key
        hist: History | None = None
        if not stored:
            engine, rec, reason = svc.engine, svc.engine.popular(k), "unknown_user"
        else:
            hist = History([e.item_id for e in stored], [e.behaviour for e in stored],  # type: ignore[misc]
                           [e.timestamp for e in stored])
            engine, rec = await recommend(svc, RecRequest(hist, k, exclude_seen, behaviour, min_new_share))
            reason = "no_known_items"
        if rec.fallback:
            svc.metrics.fallbacks.labels(reason).inc()
        svc.online.served(svc.store, svc.spawn, svc.user_key(user_id), rec.items,  # logged for the online hit rate
                          None if rec.fallback or not rec.scores else rec.scores[0])
        why = await explain_items(engine, hist, rec, behaviour, settings.explain_recent) if explain else None
        return respond(request, engine, recs_payload(rec, reason, len(stored), user_id, why))

    @router.post("/v1/recommendations", response_model=RecommendationsOut, tags=["recommendations"],
                 dependencies=read, responses=read_errors)
    async def adhoc_recommendations(body: AdHocRequest, request: Request) -> JSONResponse:
        """Top-k for a history sent in the body; nothing is stored. Each item says whether it is a
        repeat (in the history sent) or a discovery."""
        svc = state(request)
        if len(body.history) > settings.max_history:
            raise field_error(422, ["body", "history"], f"at most {settings.max_history} events "
                              f"(got {len(body.history)})", "too_long")
        if body.k > max_k:
            raise field_error(422, ["body", "k"], f"k must be <= {max_k}", "less_than_equal")
        check_behaviour(svc.engine, body.behaviour, ["body", "behaviour"])
        h = body.history
        hist: History | None = None
        if not h:
            engine, rec, reason = svc.engine, svc.engine.popular(body.k), "empty_history"
        else:
            times = [e.timestamp for e in h]
            hist = History([e.item_id for e in h], [e.behaviour for e in h],  # type: ignore[misc]
                           times if all(t is not None for t in times) else None)  # type: ignore[arg-type]
            engine, rec = await recommend(svc, RecRequest(hist, body.k, body.exclude_seen, body.behaviour,
                                                          body.min_new_share))
            reason = "no_known_items"
        if rec.fallback:
            svc.metrics.fallbacks.labels(reason).inc()
        why = await explain_items(engine, hist, rec, body.behaviour, settings.explain_recent) if body.explain else None
        return respond(request, engine, recs_payload(rec, reason, len(h), None, why))

    @router.get("/v1/items/{item_id}/similar", response_model=SimilarOut, tags=["items"], dependencies=read,
                responses={404: {"model": ErrorOut, "description": "unknown item"}, **read_errors})
    async def similar_items(
        request: Request, item_id: UserId, k: Annotated[int, Query(ge=1, le=max_k)] = 10
    ) -> JSONResponse:
        """Nearest items by cosine similarity of the model's item embeddings."""
        engine = state(request).engine
        request.scope[VERSION_KEY] = engine.version
        try:
            if engine.executor is None:
                rec = engine.similar(item_id, k)
            else:
                rec = await asyncio.get_running_loop().run_in_executor(engine.executor, engine.similar, item_id, k)
        except KeyError:
            raise HTTPException(404, f"unknown item id {item_id!r} (not in model {engine.version})") from None
        items = [{"item_id": i, "score": s} for i, s in zip(rec.items, rec.scores, strict=True)]
        return respond(request, engine, {"item_id": item_id, "items": items})

    @router.delete("/v1/users/{user_id}", response_model=ForgetOut, dependencies=admin, tags=["users"],
                   responses={**ERRORS, **AUTH_ERRORS, **STORE_ERRORS})
    async def forget_user(request: Request, user_id: UserId) -> JSONResponse:
        """Forget a user: stored events and idempotency records are removed and scrubbed from the
        store's files; the deletion ledger (hashed id) makes later replays and retraining skip them."""
        svc = state(request)
        n = await svc.forget([user_id])
        return respond(request, svc.engine, {"user_id": user_id, "deleted_events": n})

    @router.get("/healthz", response_model=HealthOut, tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        """Liveness: the process is up and serving a model."""
        return respond(request, state(request).engine, {"status": "ok"})

    @router.get("/readyz", response_model=HealthOut, tags=["ops"],
                responses={503: {"model": HealthOut, "description": "state store unreachable"}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: a model is loaded and the state store answers."""
        svc = state(request)
        try:
            ok = await asyncio.wait_for(svc.store.ping(), timeout=2.0)
        except Exception as err:  # noqa: BLE001 - any store failure means "not ready"
            log.warning("readiness: store %s failed: %s", svc.store.kind, err)
            ok = False
        out = respond(request, svc.engine, {"status": "ready" if ok else "store unavailable",
                                            "store": svc.store.kind}, 200 if ok else 503)
        if not ok:
            out.headers["Retry-After"] = str(settings.retry_after_s)
        return out

    @router.get("/metrics", tags=["ops"], response_class=Response, dependencies=read, responses=read_errors)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: request counts, latency histograms, model version and more."""
        svc = state(request)
        svc.online.refresh()  # online hit rate and drift gauges (online.py)
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @router.post("/v1/admin/reload", response_model=ReloadOut, dependencies=admin, tags=["admin"],
                 responses={**ERRORS, **AUTH_ERRORS, 404: {"model": ErrorOut, "description": "no run directory "
                            "there"}, 500: {"model": ErrorOut}})
    async def reload_model(body: ReloadIn, request: Request) -> JSONResponse:
        """Load a run directory under the reload root fully (checksums, index, warm-up), then swap;
        on error the old model stays."""
        svc = state(request)
        if settings.workers > 1:  # this request reaches one worker process of several (docs/scale-serving.md)
            raise HTTPException(409, f"this service runs {settings.workers} worker processes and a reload would "
                                "reach one of them: send SIGHUP to the service (workers restart one by one) or "
                                "serve a registry's current pointer with --watch")
        run_dir, shown = resolve_run_dir(body.run_dir, reload_root)
        async with svc.reload_lock:
            old = svc.engine
            try:
                new = await asyncio.to_thread(Engine.load, run_dir, settings, svc.executor,
                                              svc.metrics.batch_size.observe)
            except ArtifactError as err:
                svc.metrics.reloads.labels("rejected").inc()
                raise field_error(422, ["body", "run_dir"], scrub(str(err), run_dir, shown), "artifact_error") from None
            except Exception as err:  # noqa: BLE001 - keep serving the old model whatever went wrong
                log.exception("reload from %s failed", run_dir)
                svc.metrics.reloads.labels("failed").inc()
                raise HTTPException(500, f"reload failed ({type(err).__name__}); still serving {old.version}") from None
            svc.install(new, shown)  # the swap: one reference assignment
            svc.metrics.reloads.labels("ok").inc()
        svc.spawn(old.close())  # requests already queued finish on the old model
        return respond(request, new, {"previous_version": old.version, "run_dir": shown,
                                      "n_items": new.rec.spec.n_items, "index": new.index_kind,
                                      "load_seconds": round(new.load_seconds, 3)})

    return router
