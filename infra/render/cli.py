"""`python -m infra.render`: print or write one rendering (never runs gcloud or terraform)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra.manifest import REPO_ROOT, load_manifest
from infra.render.config import SOURCE_EXCLUDES, DeployConfig
from infra.render.gcloud import gcloud_commands, gcloud_files
from infra.render.terraform import render_terraform


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.render", description=(
        "Render infra/functions.toml into a Google Cloud deployment (Terraform JSON or gcloud commands). "
        "Never runs gcloud or terraform."))
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default=DeployConfig.region)
    parser.add_argument("--project-number", default="", help="the project's number (gcloud rendering: needed for "
                        "the scheduled functions' OIDC audience; Terraform reads it)")
    parser.add_argument("--env", dest="env_name", default=DeployConfig.env_name, help="environment name (prod)")
    parser.add_argument("--format", choices=("terraform", "gcloud"), default="terraform")
    parser.add_argument("--out", type=Path, help="write the files into this directory (else: print them)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be applied, write nothing")
    parser.add_argument("--domain", default="", help="public API host name")
    parser.add_argument("--email-sender", default="", help="EMAIL_SENDER (SES-verified)")
    parser.add_argument("--set-password-url", default="", help="SET_PASSWORD_URL")
    parser.add_argument("--image", default="", help="container image of the workers and migrate job")
    parser.add_argument("--source", default="", help="the repository as seen from where terraform/gcloud run "
                                                       "(default: relative path from --out, else '.')")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: print (`--dry-run`, or no `--out`) or write (`--out DIR`) the rendering; 0 on success, 2 on error."""
    args = _parser().parse_args(argv)
    writing = args.out is not None and not args.dry_run
    source = args.source or (os.path.relpath(REPO_ROOT, args.out.resolve()) if writing else ".")
    excludes: tuple[str, ...] = SOURCE_EXCLUDES
    if writing and args.out.resolve().is_relative_to(REPO_ROOT):  # never zip terraform's own directory
        excludes = (*excludes, args.out.resolve().relative_to(REPO_ROOT).as_posix())
    config = DeployConfig(project=args.project, project_number=args.project_number, region=args.region,
                          env_name=args.env_name, image_source=source,
                          image=args.image, domain=args.domain, email_sender=args.email_sender,
                          set_password_url=args.set_password_url, source_excludes=excludes)
    specs = load_manifest()
    try:
        if args.format == "terraform":
            files = render_terraform(specs, config)
            commands: list[str] = []
        else:
            commands = gcloud_commands(specs, config)
            files = gcloud_files(specs, config)
            files["deploy.sh"] = "#!/bin/sh\nset -eu\n" + "".join(f"{command}\n" for command in commands)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not writing:
        for command in commands:
            print(command)
        for name, content in files.items():
            if name != "deploy.sh":
                print(f"# ---- {name}")
                print(content, end="")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (args.out / name).write_text(content)
        print(f"wrote {args.out / name}")
    return 0
