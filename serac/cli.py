"""The ``serac`` command: one entry point whose subcommands are the library's command lines.

    serac train ...        train the scope classifier and counterfactual model (serac.training.cli)
    serac bench ...        compare SERAC with weight editors (serac.bench.cli)
    serac quickstart ...   a few edits on the offline defaults (serac.quickstart)

Each subcommand is a ``main(argv) -> int | None`` function named in :data:`COMMANDS` and imported only
when it runs, so ``serac --help`` is quick and a subcommand's dependencies (training, plotting, serving)
are needed only by that subcommand. Adding one is one line in :data:`COMMANDS`; the HTTP server, for one,
takes ``"serve": ("serac.serve.cli:main", "serve edits over HTTP")``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: Subcommand name -> ("module:function", one-line description).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("serac.training.cli:main", "train the scope classifier and the counterfactual model"),
    "bench": ("serac.bench.cli:main", "compare SERAC with weight editors on edit benchmarks"),
    "quickstart": ("serac.quickstart:main", "a few edits on the offline default models"),
    "serve": ("serac.serve.cli:main", "an OpenAI-compatible server and proxy with live edits"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: serac COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "serac COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serac COMMAND [options]``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(_usage())
        return 0 if arguments else 2
    if arguments[0] in ("-V", "--version"):
        from serac._version import __version__

        print(f"serac {__version__}")
        return 0
    name, rest = arguments[0], arguments[1:]
    if name not in COMMANDS:
        print(f"serac: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    return int(command(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
