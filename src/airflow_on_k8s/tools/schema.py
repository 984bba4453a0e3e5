"""Write or check provider/schema.json: the schema Pulumi infers from the components (airflow_on_k8s.provider).

    python -m airflow_on_k8s.tools.schema            # print it
    python -m airflow_on_k8s.tools.schema --write    # update provider/schema.json
    python -m airflow_on_k8s.tools.schema --check    # exit 1 if provider/schema.json is stale
"""

import argparse
import json
import sys
from pathlib import Path

from airflow_on_k8s.provider import schema

SCHEMA_FILE = Path("provider/schema.json")


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_FILE}")
    parser.add_argument("--check", action="store_true", help=f"fail if {SCHEMA_FILE} is stale")
    parser.add_argument("--file", type=Path, default=SCHEMA_FILE, help="the schema file (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.file.write_text(text)
    elif args.check:
        if not args.file.is_file() or args.file.read_text() != text:
            print(f"{args.file} is stale: run python -m airflow_on_k8s.tools.schema --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
