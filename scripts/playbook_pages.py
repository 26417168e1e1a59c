"""Write one Markdown page per playbook of playbooks/ for the reference site (scripts/docs.sh).

Each page is the playbook's own header comment (its usage and what it does) and a table of
its plays: name, hosts, tags, and what each runs (roles, imported playbooks and task files,
task names). Nothing is written by hand twice: the page follows the playbook.

Usage: python scripts/playbook_pages.py PLAYBOOK_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


class Loader(yaml.SafeLoader):
    """YAML as Ansible writes it: !unsafe and !vault values are read as plain text."""


def _tagged(loader, _suffix, node):
    return loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None


Loader.add_multi_constructor("!", _tagged)


def header(text: str) -> list[str]:
    """The playbook's leading comment as Markdown: prose, and its indented command lines as
    a console block."""
    out: list[str] = []
    block: list[str] = []
    for line in text.splitlines():
        if line.strip() == "---":
            continue
        if not line.startswith("#"):
            break
        body = line[2:] if line.startswith("# ") else line[1:]
        if body.startswith("  ") and body.strip():
            block.append(body.strip())
            continue
        if block:
            out += ["```console", *block, "```", ""]
            block = []
        out.append(body)
    if block:
        out += ["```console", *block, "```"]
    return out


def cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def runs(play: dict) -> str:
    parts = []
    if "import_playbook" in play or "ansible.builtin.import_playbook" in play:
        target = play.get("ansible.builtin.import_playbook") or play.get("import_playbook")
        return f"the playbook `{target}`"
    for role in play.get("roles") or []:
        name = (role.get("role") or role.get("name", "?")) if isinstance(role, dict) else role
        if name.startswith("mv6.transition."):  # its reference page, by antsibull-docs' label
            label = f"ansible_collections.{name}_role"
            parts.append(f"role {{ref}}`{name} <{label}>`")
        else:
            parts.append(f"role `{name}`")
    for section in ("pre_tasks", "tasks", "post_tasks"):
        for task in play.get(section) or []:
            name = task.get("name", "(unnamed)")
            imported = task.get("ansible.builtin.import_tasks") or task.get(
                "ansible.builtin.include_tasks"
            )
            parts.append(f"{name} (`{imported}`)" if imported else name)
    return "; ".join(parts) or "—"


def page(path: Path) -> str:
    text = path.read_text()
    plays = yaml.load(text, Loader=Loader) or []  # Loader is a SafeLoader
    lines = [f"# {path.name}", "", *header(text), "", "## Plays", ""]
    lines += ["| play | hosts | tags | runs |", "|---|---|---|---|"]
    for play in plays:
        tags = play.get("tags") or []
        tags = ", ".join(f"`{t}`" for t in ([tags] if isinstance(tags, str) else tags)) or "—"
        hosts = f"`{play['hosts']}`" if "hosts" in play else "—"
        lines.append(
            f"| {cell(play.get('name', '(unnamed)'))} | {hosts} | {tags} | {cell(runs(play))} |"
        )
    lines += [
        "",
        "What each playbook guarantees, and its variables: [Playbooks](../guide/playbooks.md).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    books = sorted(source.glob("*.yml"))
    index = [
        "# Playbooks",
        "",
        "The playbooks of the collection, each run as",
        "",
        "```console",
        "ansible-playbook mv6.transition.NAME -i INVENTORY",
        "```",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
    ]
    for book in books:
        (out / f"{book.stem}.md").write_text(page(book))
        index.append(book.stem)
    index += ["```", ""]
    (out / "index.md").write_text("\n".join(index))


if __name__ == "__main__":
    main()
