"""OpenEnv servers as environments (env.kind=openenv): each episode is one WebSocket session with the
server at env.url, opened by reset and closed by close() when the episode has ended.

The policy's text becomes the server's action through the glue's `action(text)` (an Action model or
a dict); without one, through the action schema the server publishes at /schema: its one required
text field (e.g. {"message": text}). The server's observation becomes text through the glue's
`observation(obs)` (a string, a {"role", "content"} message, a list of them, or None); without
one, its text fields (one: as is; several: `name: value` lines; none: the fields as JSON). Reward
and done are the observation's. The glue may also name `client`, an EnvClient subclass of the
env's own package (typed observations; `action` then builds its Action); else the package's
GenericEnvClient, which needs nothing of the env installed here.

Every call to the server (connect, reset, step, close) is bounded by env.step_timeout_s: a server
that does not answer ends the episode with StepTimeout, one that goes away or answers with an
error ends it with EnvError (stop reasons `timeout` and `env_error`). The clients of all episodes
share one event loop on a daemon thread of this process, so episodes of a batch may call from any
threads at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import ipaddress
import json
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable
from urllib.parse import urlsplit

from rlhf_ray.envs.protocol import EnvError, StepTimeout
from rlhf_ray.errors import UserError
from rlhf_ray.rewards.functions import FunctionRef, _import_file, _import_module

MISSING = "env.kind=openenv needs the openenv package: pip install 'rlhf-ray[openenv]'"
CAPACITY_HINT = (
    " (the server allows fewer sessions than the episodes played at once: start it with "
    "max_concurrent_envs of at least batch_size x group_size)"
)


def openenv_factory(url: str | None, glue: ModuleType | None, timeout_s: float) -> Callable[[], OpenEnvEpisode]:
    """A factory of episodes against the OpenEnv server at `url`. UserError (one line) if the openenv
    package is missing, env.url is not set, or the glue's names are not what they must be."""
    try:
        import openenv  # noqa: F401 - the package's presence, refused in one line
        from openenv.core.env_client import EnvClient
        from openenv.core.generic_client import GenericEnvClient
    except ImportError:
        raise UserError(MISSING) from None
    if not url:
        raise UserError("env.kind=openenv needs env.url: the OpenEnv server's URL (e.g. http://127.0.0.1:8000)")
    for name in ("action", "observation"):
        if getattr(glue, name, None) is not None and not callable(getattr(glue, name)):
            raise UserError(f"env.glue: {name} must be a function, not {type(getattr(glue, name)).__name__}")
    client = getattr(glue, "client", None)
    if client is not None and not (inspect.isclass(client) and issubclass(client, EnvClient)):
        raise UserError(f"env.glue: client must be an openenv EnvClient subclass, not {client!r}")
    server = Server(url, glue, float(timeout_s), client or GenericEnvClient)
    return lambda: OpenEnvEpisode(server)


def load_glue(ref: FunctionRef, cache_dir: Path) -> ModuleType:
    """The glue module on this node: a file shipped as text (imported from the cache, as reward
    functions are) or an importable module. ConfigError naming env.glue if it cannot be imported."""
    return _import_file(ref, cache_dir) if ref.source is not None else _import_module(ref)


class Server:
    """What the episodes against one server share: its URL, the glue, the client class, the timeout
    and (found once) the action's text field."""

    def __init__(self, url: str, glue: ModuleType | None, timeout_s: float, client_cls: type):
        self.url, self.timeout_s, self.client_cls = url.rstrip("/"), timeout_s, client_cls
        self.glue_action = getattr(glue, "action", None)
        self.glue_observation = getattr(glue, "observation", None)
        self._field: str | None = None
        self._field_lock = threading.Lock()

    # -- text <-> the env's types ---------------------------------------------------------------
    def action(self, text: str) -> Any:
        if self.glue_action is not None:
            return self.glue_action(text)
        return {self.action_field(): text}

    def observation(self, obs: Any) -> Any:
        return self.glue_observation(obs) if self.glue_observation is not None else default_text(obs)

    def action_field(self) -> str:
        """The action's one required text field, from the server's /schema (asked once per factory)."""
        if self._field is not None:
            return self._field
        if not self._field_lock.acquire(timeout=self.timeout_s):  # another episode is asking: bounded too
            raise StepTimeout(f"OpenEnv server {self.url}: /schema: no answer within {self.timeout_s:g} s")
        try:
            if self._field is None:
                self._field = text_field(self._schema().get("action") or {}, self.url)
            return self._field
        finally:
            self._field_lock.release()

    def _schema(self) -> dict:
        import httpx

        try:
            # no proxy for a server on this machine (as openenv's own client does for its WebSocket)
            with httpx.Client(timeout=self.timeout_s, trust_env=not _is_loopback(self.url)) as http:
                response = http.get(f"{http_url(self.url)}/schema")
                response.raise_for_status()
                return response.json()
        except httpx.TimeoutException as exc:
            raise StepTimeout(f"OpenEnv server {self.url}: /schema: no answer within {self.timeout_s:g} s") from exc
        except Exception as exc:  # noqa: BLE001 - any failure ends the episode with env_error
            raise EnvError(f"OpenEnv server {self.url}: /schema failed: {type(exc).__name__}: {exc}") from exc

    # -- calls on the shared loop -----------------------------------------------------------------
    def new_client(self):
        kwargs = {"base_url": self.url, "connect_timeout_s": self.timeout_s, "message_timeout_s": self.timeout_s}
        params = inspect.signature(self.client_cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return self.client_cls(**kwargs)

    def run(self, what: str, make: Callable[[], Any]) -> Any:
        """make()'s coroutine on the shared loop, bounded by timeout_s: its result, StepTimeout, or EnvError."""

        async def bounded():
            try:
                return await asyncio.wait_for(make(), self.timeout_s)
            except asyncio.TimeoutError:
                raise StepTimeout(
                    f"OpenEnv server {self.url}: no answer to {what} within {self.timeout_s:g} s"
                ) from None
            except (StepTimeout, EnvError):
                raise
            except Exception as exc:  # noqa: BLE001 - a closed socket, a refused connection, a server error
                hint = CAPACITY_HINT if "CAPACITY_REACHED" in str(exc) else ""
                raise EnvError(f"OpenEnv server {self.url}: {what} failed: {type(exc).__name__}: {exc}{hint}") from exc

        future = asyncio.run_coroutine_threadsafe(bounded(), background_loop())
        try:
            return future.result(self.timeout_s + 5.0)  # the loop itself stuck: never wait longer
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StepTimeout(f"OpenEnv server {self.url}: no answer to {what} within {self.timeout_s:g} s") from None


class OpenEnvEpisode:
    """One episode: reset(seed, **row) opens its session, step(text) -> (observation, reward, done),
    close() ends the session (idempotent, never raises). The client lives on the shared loop only.
    After a failed call every later one fails: openenv's client would reconnect by itself, and a new
    connection is a new session whose environment was never reset."""

    def __init__(self, server: Server):
        self.server = server
        self._client = None
        self._socket = None  # the client's WebSocket that reset opened
        self._closed = False
        self._failed: str | None = None

    def reset(self, seed: int | None = None, **row: Any) -> Any:
        kwargs = jsonable({**row, **({} if seed is None else {"seed": seed})})
        if self.server.glue_action is None:
            self.server.action_field()  # an action without one text field is refused before the first turn

        async def go():
            if self._closed:
                raise EnvError("reset after close")
            client = self._client
            if client is None:
                client = self._client = self.server.new_client()
                await client.connect()
                if self._closed:  # close() came while connecting (this reset was abandoned)
                    await _quiet_close(client)
                    raise EnvError("reset after close")
            result = await client.reset(**kwargs)
            self._socket = getattr(client, "_ws", None)
            return result

        result = self._run("reset", go)
        return self.server.observation(result.observation)

    def step(self, action_text: str) -> tuple[Any, float | None, bool]:
        action = self.server.action(action_text)

        async def go():
            client = self._client
            if client is None:
                raise EnvError("step before reset" if not self._closed else "step after close")
            if not _same_socket(client, self._socket):
                raise EnvError("the server closed this episode's session (it went away or restarted)")
            return await client.step(action)

        result = self._run("step", go)
        reward = None if result.reward is None else float(result.reward)
        return self.server.observation(result.observation), reward, bool(result.done)

    def _run(self, what: str, go: Callable[[], Any]) -> Any:
        if self._failed is not None:
            raise EnvError(f"OpenEnv server {self.server.url}: {what} after the session failed ({self._failed})")
        try:
            return self.server.run(what, go)
        except Exception as exc:
            self._failed = f"{type(exc).__name__}: {exc}"[:200]
            raise

    def close(self) -> None:
        """End the server's session (its env instance is freed there); bounded, errors ignored."""

        async def go():
            self._closed = True
            client, self._client = self._client, None
            if client is not None:
                await client.close()

        if self._client is None:
            self._closed = True
            return
        try:
            self.server.run("close", go)
        except Exception:  # noqa: BLE001 - a session of a server that went away is gone already
            pass

    def __del__(self):  # a safety net where close() was not called: the session is not left open
        client = self._client
        if client is not None:
            try:
                asyncio.run_coroutine_threadsafe(_quiet_close(client), background_loop())
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _same_socket(client, socket) -> bool:
    """Whether the client still holds the open WebSocket that reset opened (nothing to check where
    the client keeps none)."""
    if socket is None:
        return True
    now = getattr(client, "_ws", socket)
    return now is socket and getattr(getattr(now, "state", None), "name", "OPEN") not in ("CLOSING", "CLOSED")


async def _quiet_close(client) -> None:
    try:
        await asyncio.wait_for(client.close(), 10.0)
    except BaseException:  # noqa: BLE001 - best effort
        pass


_loop_lock = threading.Lock()
_loop: tuple[asyncio.AbstractEventLoop, threading.Thread, int] | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's loop for OpenEnv clients, on a daemon thread (started on first use, and again
    in a forked child)."""
    global _loop
    with _loop_lock:
        if _loop is None or not _loop[1].is_alive() or _loop[2] != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True, name="rlhf-ray-openenv")
            thread.start()
            _loop = (loop, thread, os.getpid())
        return _loop[0]


def text_field(schema: dict, url: str) -> str:
    """The action's field that takes the policy's text: its one required string field, else its one
    string field. EnvError (write a glue action) if there is no such single field."""
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}

    def is_text(p: dict) -> bool:
        return p.get("type") == "string" or any(o.get("type") == "string" for o in p.get("anyOf", []))

    required = [k for k in schema.get("required") or [] if k in props]
    texts = [k for k, p in props.items() if is_text(p)]
    if len(required) == 1 and required[0] in texts:
        return required[0]
    if not required and len(texts) == 1:
        return texts[0]
    raise EnvError(
        f"OpenEnv server {url}: its action has fields {sorted(props)} (required {required}), not one text "
        "field: write action(text) in the env.glue file (README: Train against an OpenEnv server)"
    )


def default_text(obs: Any) -> Any:
    """An observation's text without glue: its text fields (one: as is; several: `name: value`
    lines), else its other fields as JSON; None if it has nothing."""
    if obs is None or isinstance(obs, str):
        return obs
    if hasattr(obs, "model_dump"):
        obs = obs.model_dump()
    if not isinstance(obs, dict):
        return str(obs)
    fields = {k: v for k, v in obs.items() if k not in ("reward", "done", "metadata")}
    texts = {k: v for k, v in fields.items() if isinstance(v, str) and v}
    if len(texts) == 1:
        return next(iter(texts.values()))
    if texts:
        return "\n".join(f"{k}: {v}" for k, v in texts.items())
    rest = {k: v for k, v in fields.items() if v not in (None, "", [], {})}
    return json.dumps(rest, default=str) if rest else None


def jsonable(row: dict) -> dict:
    """The row's columns as JSON can carry them (numpy values as Python ones, anything else as text)."""

    def default(value):
        for name in ("tolist", "item"):
            if callable(getattr(value, name, None)):
                return getattr(value, name)()
        return str(value)

    return json.loads(json.dumps(row, default=default))


def http_url(url: str) -> str:
    if url.startswith("ws://"):
        return "http://" + url[5:]
    if url.startswith("wss://"):
        return "https://" + url[6:]
    return url if url.startswith(("http://", "https://")) else "http://" + url


def _is_loopback(url: str) -> bool:
    host = urlsplit(http_url(url)).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
