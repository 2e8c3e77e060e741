"""`rlhf-ray serve-reward --config FILE`: the config's reward sources (classifier, model, function)
as an HTTP service in this process, without Ray; runs point a kind http source at the printed URL
(see rlhf_ray.rewards.server for the protocol)."""

from __future__ import annotations

from rlhf_ray.config.load import load_config
from rlhf_ray.errors import UserError
from rlhf_ray.models.policy import role_device
from rlhf_ray.rewards.server import RewardServer
from rlhf_ray.rewards.sources import RewardSources, check_sources
from rlhf_ray.stages.ppo import reward_sources


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML config whose reward section names the sources (default: built in)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def main(args) -> dict:
    # Imported here: the CLI imports every tool module to build its parser, and these pull in torch and Ray.

    cfg = load_config(args.config, args.overrides)
    remote = [s.resolved_name() for s in cfg.reward.source_list() if s.kind == "http"]
    if remote:
        raise UserError(
            f"serve-reward serves classifier, model and function sources, not http ones ({', '.join(remote)}): "
            "drop them from reward.sources in this config"
        )
    check_sources(cfg)
    specs, _ = reward_sources(cfg, publish=False, train=False)
    sources = RewardSources(specs, cfg, device=role_device(cfg.cluster.scorer_gpus))
    try:
        server = RewardServer(sources, args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}): pick another --port") from None
    # The URL goes to stdout, alone on its line: scripts (and the tests) read it from there.
    print(f"rlhf-ray: serving reward sources {', '.join(sources.names)} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return {"url": server.url, "sources": sources.names}
