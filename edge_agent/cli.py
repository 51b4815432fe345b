"""The command line of SPEC.md. Thin: parse arguments, call the parts, map errors to exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TypeAlias

from edge_agent import __version__
from edge_agent.errors import ConfigError, ModelError

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_INVALID = 2


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config  # noqa: PLC0415  (keep `--help` fast)

    try:
        load_config(args.file)
    except ConfigError as err:
        for line in err.problems:
            _err(line)
        return EXIT_INVALID
    print(f"{args.file}: valid")
    return EXIT_OK


def _cmd_config_push(args: argparse.Namespace) -> int:
    from edge_agent.push import PushError, config_from_env, load_settings, load_update_file, push  # noqa: PLC0415

    try:
        update = load_update_file(args.file)
        settings = load_settings(config_from_env(args.config), host=args.host, port=args.port, key_file=args.key)
        outcome = push(
            settings,
            update,
            device=args.device,
            group=args.group,
            version=args.version,
            timeout=args.timeout,
            expect=args.expect,
        )
    except PushError as err:
        _err(str(err))
        return err.exit_code
    print("\n".join(outcome.table()))
    return outcome.exit_code


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_agent.runtime.backends import select_backend  # noqa: PLC0415
    from edge_agent.runtime.inspection import format_report, inspect_model  # noqa: PLC0415
    from edge_agent.runtime.loader import read_model_file  # noqa: PLC0415

    try:
        mf = read_model_file(args.model)
        backend = select_backend(args.interpreter)
        report = inspect_model(mf, backend)
    except ModelError as err:
        _err(str(err))
        return EXIT_INVALID
    print("\n".join(format_report(report)))
    return EXIT_OK


def _load_or_exit(path: str | None) -> tuple[object | None, int]:
    from edge_agent.config import config_path_from_env, load_config  # noqa: PLC0415

    try:
        return load_config(config_path_from_env(path)), EXIT_OK
    except ConfigError as err:
        for line in err.problems:
            _err(line)
        return None, EXIT_INVALID


def _setup_logging(level: str) -> None:
    from edge_agent.logs import setup_logging  # noqa: PLC0415

    setup_logging(level)


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.config import AgentConfig  # noqa: PLC0415

    cfg, rc = _load_or_exit(args.config)
    if not isinstance(cfg, AgentConfig):
        return rc
    _setup_logging(cfg.service.log_level)
    from edge_agent.config import config_path_from_env  # noqa: PLC0415

    agent = Agent(cfg, config_path=config_path_from_env(args.config))
    agent.install_signal_handlers()
    return agent.run()


def _cmd_check(args: argparse.Namespace) -> int:
    from edge_agent.check import run_check  # noqa: PLC0415
    from edge_agent.config import AgentConfig  # noqa: PLC0415

    cfg, rc = _load_or_exit(args.config)
    if not isinstance(cfg, AgentConfig):
        return rc
    return run_check(cfg, args.sample or [], print)


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.bench import format_report, run_bench, to_json  # noqa: PLC0415
    from edge_agent.config import AgentConfig  # noqa: PLC0415

    cfg, rc = _load_or_exit(args.config)
    if not isinstance(cfg, AgentConfig):
        return rc
    try:
        report = run_bench(cfg, frames=args.frames, warmup=args.warmup, timeout_s=args.timeout)
    except (ModelError, RuntimeError) as err:
        _err(str(err))
        return EXIT_FAULT
    print(to_json(report) if args.json else "\n".join(format_report(report)))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.demo import run_demo  # noqa: PLC0415

    return run_demo(seconds=args.seconds, port=args.port, model=args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="TFLite inference on the edge, guarded, over MQTT.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_inspect, _add_run, _add_check, _add_bench, _add_demo, _add_config):
        add(sub)
    return parser


# a string: argparse's class is generic for type checkers only
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_inspect(sub: _Subparsers) -> None:
    p = sub.add_parser("inspect", help="print a model's tensors, quantization, metadata and Edge TPU ops")
    p.add_argument("model")
    p.add_argument("--interpreter", default="auto", choices=["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"])
    p.set_defaults(func=_cmd_inspect)


def _add_run(sub: _Subparsers) -> None:
    r = sub.add_parser("run", help="the daemon, in the foreground (systemd runs this)")
    r.add_argument("-c", "--config", help="config file (default $EDGE_AGENT_CONFIG or /etc/edge-agent/agent.toml)")
    r.set_defaults(func=_cmd_run)


def _add_check(sub: _Subparsers) -> None:
    c = sub.add_parser("check", help="validate config, load the model, show the plan, run samples through the guard")
    c.add_argument("-c", "--config")
    c.add_argument("--sample", action="append", metavar="PATH", help="an image or a CSV of rows (repeatable)")
    c.set_defaults(func=_cmd_check)


def _add_bench(sub: _Subparsers) -> None:
    b = sub.add_parser(
        "bench",
        help="the configured pipeline for N frames against a bare invoke() loop: per-stage p50/p99, fps, CPU, memory",
    )
    b.add_argument("-c", "--config")
    b.add_argument("--frames", type=int, default=500, metavar="N", help="timed results (default 500)")
    b.add_argument("--warmup", type=int, default=20, metavar="N", help="results before the timing starts (default 20)")
    b.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up after this long (default 600)")
    b.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    b.set_defaults(func=_cmd_bench)


def _add_demo(sub: _Subparsers) -> None:
    d = sub.add_parser("demo", help="the bundled digits model on bundled frames, results live over MQTT")
    d.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    d.add_argument("--port", type=int, default=1883, help="broker port to use or start (default 1883)")
    d.add_argument("--model", choices=["float", "uint8"], default="uint8")
    d.set_defaults(func=_cmd_demo)


def _add_config(sub: _Subparsers) -> None:
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    v = cfg_sub.add_parser("validate", help="validate a config file")
    v.add_argument("file")
    v.set_defaults(func=_cmd_config_validate)
    _add_config_push(cfg_sub)


def _add_config_push(cfg_sub: _Subparsers) -> None:
    push = cfg_sub.add_parser(
        "push",
        help="sign and publish a config update, wait for the answers, print them",
        description="Sign a partial config (TOML or JSON) with the fleet's update key, publish it to one device "
        "or a group, and print each device's answer. Exit 0 all applied, 1 any rejected, 3 no answer "
        "(or fewer than --expect), 2 nothing sent (bad file, config or key).",
    )
    target = push.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID", help="one device: P/ID/config/set")
    target.add_argument("--group", metavar="G", help="a group: P/group/G/config/set")
    push.add_argument(
        "--version",
        type=int,
        metavar="N",
        help="the update's version (default: the running version from the retained config/state, + 1)",
    )
    push.add_argument(
        "-c",
        "--config",
        help="an agent-style config file: its [mqtt] section and remote.hmac_key_file (default $EDGE_AGENT_CONFIG)",
    )
    push.add_argument("--key", metavar="FILE", help="the update key file (overrides remote.hmac_key_file)")
    push.add_argument("--host", help="the broker (overrides mqtt.host)")
    push.add_argument("--port", type=int, help="the broker's port (overrides mqtt.port)")
    push.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="how long to wait for the answers (default 30)"
    )
    push.add_argument(
        "--expect",
        type=int,
        metavar="N",
        help="a group: stop once N devices answered (default: the members seen in the retained config/state)",
    )
    push.add_argument("file", metavar="FILE", help="the partial config: .toml or .json")
    push.set_defaults(func=_cmd_config_push)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return EXIT_OK
    return rc
