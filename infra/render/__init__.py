"""Renders the function manifest (`infra/functions.toml`) into a deployment on Google Cloud.

Two equivalent renderings, both pure functions of (manifest, `DeployConfig`):

- `render_terraform`: a Terraform configuration in JSON syntax (`*.tf.json`), file name -> content;
- `gcloud_commands` (+ `gcloud_files` for the URL map it imports): the same deployment as `gcloud` commands.

Nothing is called and nothing is written at import or by those functions; only `main()` writes, with `--out`.
Every function of the manifest is rendered from its kind (http, scheduled, worker): no function name is special.

    python -m infra.render --project P [--region R] [--format terraform|gcloud] [--out DIR] [--dry-run]

One module per part: `config` (DeployConfig), `facts` (names, budgets, secrets, validation, environment), `url_map`,
`terraform` (+ `tf_base`, `tf_foundation`, `tf_compute`), `gcloud`, `cli`.
"""

from infra.render.cli import main
from infra.render.config import DeployConfig
from infra.render.facts import account_of, connection_budget, function_name, module_of, validate
from infra.render.gcloud import gcloud_commands, gcloud_files
from infra.render.terraform import render_terraform

__all__ = ["DeployConfig", "account_of", "connection_budget", "function_name", "gcloud_commands", "gcloud_files",
           "main", "module_of", "render_terraform", "validate"]
