"""The docs page "Against other libraries" (docs/peers.md), rendered from the peer scripts' JSON (measuring nothing).

    python benchmarks/peers/report.py --readme docs/peers.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - the sibling module, also when run as a script

BLOCK = "peers"  # the docs block this script owns (docs/peers.md)
PEERS = {"llm_compressor": "llm-compressor", "torch_pruning": "Torch-Pruning"}


def _versions(name: str, result: dict[str, Any]) -> dict[str, Any]:
    if "peer_versions" in result:
        return result["peer_versions"]
    jobs = result["jobs"]
    return jobs[0]["peer"]["phase"]["versions"] if jobs else {}


def _table(name: str, result: dict[str, Any]) -> str:
    if name == "torch_pruning":
        import torchpruning

        return torchpruning.table(result)
    return "\n".join([common.HEADER, *(common.job_row(j) for j in result["jobs"])])


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, result in results.items():
        lines += [f"**{PEERS.get(name, name)}** ({', '.join(f'{k} {v}' for k, v in _versions(name, result).items())}; "
                  f"{result['model']}, {result['dtype']}, {result['device']}, "
                  f"{result['machine']['threads']} threads, {result['machine']['processor']}):", "",
                  _table(name, result), ""]
    return "\n".join(lines).rstrip()


def load(folder: Path = common.RESULTS) -> dict[str, dict[str, Any]]:
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in PEERS
            if (folder / f"{name}.json").exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, help="rewrite this page's peers block (docs/peers.md)")
    args = parser.parse_args()
    text = render(load())
    print(text)
    if args.readme:
        from benchsuite.reporting.blocks import update_block

        update_block(args.readme, BLOCK, text)


if __name__ == "__main__":
    main()
