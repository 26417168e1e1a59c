#!/usr/bin/env bash
# make docs: the reference site, static HTML in build/docs (docs/site/README.md).
#
#   1. antsibull-docs writes the reference of the collection (modules, filters, tests,
#      lookups, roles from their argument specs) as reStructuredText;
#   2. the Markdown pages of docs/ (with their pictures) and README.md join it as the guide,
#      through MyST, and scripts/playbook_pages.py writes a page per playbook;
#   3. sphinx-build makes the HTML, with every warning an error (-W) and no intersphinx:
#      this machine has no network, so every reference must resolve inside the site.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
export PATH=$top/.venv/bin:$PATH ANSIBLE_CONFIG=$top/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH=$top/.collections
out=$top/build/docs
mkdir -p "$top/build"
# Built in a directory of its own and put in place at the end: two builds at once do not mix,
# and a failed build leaves the last good site.
work=$(mktemp -d "$top/build/.docs.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src/guide" "$src/playbooks"
# antsibull-docs refuses a destination that others may write to.
install -d -m 0700 "$src/collection"
# The collection is not on Galaxy: its pages link to the collection's index of this site and
# name the install from the built tarball (scripts/collection.sh, docs/execution_environment.md)
# instead of antsibull-docs' Galaxy defaults.
version=$(sed -n 's/^version: *//p' galaxy.yml)
cat >"$work/antsibull-docs.cfg" <<EOF
collection_url = {
    "mv6.transition" = "index.html"
}
collection_install = {
    "mv6.transition" = "ansible-galaxy collection install --offline mv6-transition-$version.tar.gz"
}
EOF
antsibull-docs --config-file "$work/antsibull-docs.cfg" collection --use-current \
  --squash-hierarchy --fail-on-error --dest-dir "$src/collection" mv6.transition
cp docs/site/index.rst docs/site/ansible.rst "$src/"
cp docs/*.md "$src/guide/"
cp -r docs/pictures "$src/guide/pictures"
# README.md names the pages as docs/NAME.md: inside the guide they are its neighbours.
# shellcheck disable=SC2016 # backquotes of Markdown, not of the shell
sed -e 's|`docs/\([a-z_]*\)\.md`|[\1](\1.md)|g' README.md >"$src/guide/README.md"
python scripts/playbook_pages.py playbooks "$src/playbooks"
sphinx-build -q -W --keep-going -b html -c docs/site "$src" "$work/html"
rm -rf "$out"
mv "$work/html" "$out"
echo "docs: $out/index.html"
