"""`turnout keys create | list | revoke | rotate`: proxy keys in the ledger database, from a shell.

The database is the config's `usage.ledger` (`--config`, default ./proxy.yaml or $TURNOUT_CONFIG) or
`--ledger FILE`. A created or rotated key's secret is printed once, on its own line, to stdout
(everything else goes to stderr), so `KEY=$(turnout keys create --name app --tier free)` works.
Every serving process that shares the database accepts it, or refuses it once revoked, within a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from proxy.config import ConfigError, load
from proxy.usage.keystore import KeyStore, KeyStoreError


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("keys", help="proxy keys kept in the ledger database: create, list, revoke, rotate")
    p.add_argument("--config", default=None, help="config whose usage.ledger holds the keys")
    p.add_argument("--ledger", default=None, help="the database file (instead of the config's)")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key; prints its secret once")
    c.add_argument("--name", required=True)
    c.add_argument("--tier", default=None)
    c.add_argument("--role", choices=("user", "admin"), default="user", help="admin: may use /turnout/admin/*")
    c.add_argument("--budget-day", type=float, default=None, help="USD per day")
    c.add_argument("--rpm", type=int, default=None, help="requests per minute")
    c.add_argument("--routes", nargs="+", default=None, help="the routes, targets or aliases it may call")
    c.add_argument("--expires", default=None, help="30d, 12h, 90m or an ISO date (UTC)")
    ls = ks.add_parser("list", help="active keys, by prefix (--all: revoked and expired too)")
    ls.add_argument("--all", action="store_true")
    ls.add_argument("--json", action="store_true")
    r = ks.add_parser("revoke", help="revoke a key by name or prefix")
    r.add_argument("ref")
    ro = ks.add_parser("rotate", help="a new secret for a key (same settings); the old one is revoked")
    ro.add_argument("ref")


def _store(args: argparse.Namespace, default_config: str) -> KeyStore:
    if args.ledger:
        return KeyStore(args.ledger)
    try:
        cfg = load(args.config or default_config)
    except ConfigError as e:
        raise SystemExit(f"turnout: {e}") from None
    if not cfg.usage.ledger:
        raise SystemExit("turnout: the config has no usage ledger (usage.ledger is off); give --ledger FILE")
    return KeyStore(os.path.expanduser(cfg.usage.ledger), frozenset(k.name for k in cfg.keys))


def keys_command(args: argparse.Namespace, default_config: str) -> int:
    store = _store(args, default_config)
    try:
        if args.keys_command == "create":
            secret, k = store.create(args.name, args.tier, args.rpm, args.budget_day, args.routes, args.expires,
                                     args.role)
            print(f"created key '{k.name}' ({k.prefix}…); its secret, shown this once:", file=sys.stderr)
            print(secret)
        elif args.keys_command == "rotate":
            secret, k = store.rotate(args.ref)
            print(f"rotated key '{k.name}': the old secret is revoked; the new one ({k.prefix}…), shown once:",
                  file=sys.stderr)
            print(secret)
        elif args.keys_command == "revoke":
            k = store.revoke(args.ref)
            print(f"revoked key '{k.name}' ({k.prefix}…)", file=sys.stderr)
        else:
            rows = [k.public() for k in store.list(all=args.all)]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'NAME':20s} {'PREFIX':12s} {'TIER':8s} {'RPM':>5s} {'USD/DAY':>8s} {'STATUS':8s} EXPIRES")
                for r in rows:
                    print(f"{r['name']:20s} {r['prefix'] + '…':12s} {r['tier'] or '-':8s} {r['rpm'] or '-'!s:>5s} "
                          f"{'-' if r['budget_day'] is None else r['budget_day']!s:>8s} {r['status']:8s} "
                          f"{r['expires'] or 'never'}")
    except KeyStoreError as e:
        print(f"turnout keys: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
