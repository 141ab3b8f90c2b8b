"""The fixture hierarchy the integration tests build: 8 nodes, two branches, a matrix.

    base (upstream:seed)
    ├── tools
    │   ├── runtime:1 ── framework ── app
    │   └── runtime:2
    └── other ── other-app
"""

from __future__ import annotations

from tests.conftest import Project, Testbed

ALL = {"base", "tools", "runtime:1", "runtime:2", "framework", "app", "other", "other-app"}
BRANCH_A = {"tools", "runtime:1", "runtime:2", "framework", "app"}
BRANCH_B = {"other", "other-app"}


def write_config(project: Project, testbed: Testbed, namespace: str, backend: str = "buildah",
                 jobs: int = 2, extra: str = "", registry: str | None = None,
                 auth_file: str | None = None) -> None:
    auth = f'auth_file = "{auth_file}"' if auth_file else ""
    project.write_config(f"""
        [catalog]
        layers = "layers"

        [registry]
        url = "{registry or testbed.registry}/{namespace}"
        tls_verify = false
        {auth}

        [build]
        backend = "{backend}"
        jobs = {jobs}
        timeout = "10m"

        [build.buildkit]
        docker_host = "{testbed.docker_host}"

        [state]
        dir = "state"

        [upstream.seed]
        image = "{testbed.seed_image}"
        tag = "{testbed.seed_tag}"
        tls_verify = false
        {extra}
    """)


def write_layers(project: Project, *, sleep_s: float = 0, fail_tools: bool = False) -> None:
    sleep = f"RUN sleep {sleep_s}\n" if sleep_s else ""
    project.layer("base", 'from = "upstream:seed"\ntags = ["1.0"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo base > /base.txt\nUSER 1000\n")
    tools_run = "RUN echo compiling; exit 3\n" if fail_tools else "RUN cat /opt/tools.txt\n"
    project.layer("tools", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY tools.txt /opt/tools.txt\n"
                  + tools_run + sleep,
                  files={"tools.txt": "tools v1\n", "notes.tmp": "ignored\n",
                         ".dockerignore": "*.tmp\n"})
    project.layer("runtime", 'from = "tools"\ntags = ["{v}"]\n[matrix]\nv = ["1", "2"]\n'
                  '[args]\nRUNTIME_VERSION = "{v}"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG RUNTIME_VERSION\n"
                  "RUN echo runtime $RUNTIME_VERSION > /tmp/runtime.txt\n",
                  files={"install.sh": "#!/bin/sh\necho install\n"})
    project.layer("framework", 'from = "runtime:1"\ntags = ["3"]\n',
                  files={"requirements.txt": "flask==3.0.3\n"})
    project.layer("app", 'from = "framework"\ntags = ["0.1"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY app.py /home/app/app.py\n",
                  files={"app.py": "print('hello')\n"})
    project.layer("other", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo other > /tmp/other\n" + sleep)
    project.layer("other-app", 'from = "other"\n')
