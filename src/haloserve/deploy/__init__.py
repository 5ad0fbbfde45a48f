"""``halo deploy``: one spec file in, Dockerfiles, Compose files, a Swarm stack, multi-node launch scripts and
host set-up out, every placement checked with the planner first.

Typical use::

    from haloserve.deploy import load_spec, check_fit, deployment_files, write_files
    doc = load_spec(Path("cluster.yaml"))                  # errors name file:line
    fit = check_fit(doc.spec, doc.where, doc.lines)        # the planner, per node
    files = deployment_files(doc.spec, fit, doc.text)      # + the haloserve wheel and the spec
    write_files(files, Path("deploy/"))
"""

from haloserve.deploy.fit import FitReport, check_fit
from haloserve.deploy.loader import Document, SpecError, load_spec, load_spec_text
from haloserve.deploy.render import RenderedFile, deployment_files, render_files, write_files
from haloserve.deploy.spec import DeploySpec

__all__ = [
    "DeploySpec",
    "Document",
    "FitReport",
    "RenderedFile",
    "SpecError",
    "check_fit",
    "deployment_files",
    "load_spec",
    "load_spec_text",
    "render_files",
    "write_files",
]
