"""``quantship completion bash|zsh``: a shell completion script made from the parser
itself, so it never drifts from the flags: commands, each command's flags (old names
kept for a release are left out), the values of flags and first arguments with
choices, backend names for ``--backend`` and ``check``'s runtime, and file names
elsewhere.

    eval "$(quantship completion bash)"      # in ~/.bashrc
    eval "$(quantship completion zsh)"       # in ~/.zshrc (through bashcompinit)
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")
BACKEND_FLAGS = ("--backend",)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    from quantship.backends import registry
    from quantship.cli_parser import subcommands

    parsers = subcommands(parser)
    commands = sorted(parsers)
    flag_cases, value_cases = [], []
    for name in commands:
        flags: list[str] = []
        for a in parsers[name]._actions:
            if a.help == argparse.SUPPRESS:
                continue
            flags.extend(o for o in a.option_strings if o.startswith("--"))
            values: list[str] = []
            if a.choices is not None:
                values = [str(c) for c in a.choices]
            elif any(o in BACKEND_FLAGS for o in a.option_strings) or a.dest == "runtime":
                values = list(registry.names())
            for o in a.option_strings if values else ():
                value_cases.append(f"        {name}:{o}) words={shlex.quote(' '.join(values))};;")
            if values and not a.option_strings:  # a positional with choices, right after it
                value_cases.append(
                    f"        {name}:{name}) words={shlex.quote(' '.join(values))};;"
                )
        flag_cases.append(f"        {name}) words={shlex.quote(' '.join(sorted(flags)))};;")
    body = "\n".join(
        [
            "_quantship() {",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    local cmd="${COMP_WORDS[1]}" words=""',
            "    if [[ $COMP_CWORD -eq 1 ]]; then",
            f'        COMPREPLY=($(compgen -W {shlex.quote(" ".join([*commands, "--help", "--version"]))} -- "$cur"))',
            "        return",
            "    fi",
            '    case "$cmd:$prev" in',
            *value_cases,
            "    esac",
            '    if [[ -n "$words" ]]; then',
            '        COMPREPLY=($(compgen -W "$words" -- "$cur")); return',
            "    fi",
            '    if [[ "$cur" == -* ]]; then',
            '        case "$cmd" in',
            *flag_cases,
            "        esac",
            '        COMPREPLY=($(compgen -W "$words" -- "$cur")); return',
            "    fi",
            '    COMPREPLY=($(compgen -f -- "$cur"))',
            "}",
            "complete -o filenames -F _quantship quantship",
        ]
    )
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body + "\n"
    return body + "\n"
