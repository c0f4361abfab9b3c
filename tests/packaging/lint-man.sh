#!/bin/sh
# Checks the man pages: groff formats them without a single warning, each is in the section its
# file name says (.TH), has the sections a man page needs, documents every option the program's
# --help lists and every exit status.
#   lint-man.sh MANDIR PROGRAM.SECTION=BINARY:CODES ...   e.g. colod-primary.8=/build/daemons/colod-primary:0123
set -eu
mandir=$1
shift
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
lint() { groff -man -Tutf8 -ww -z "$1" 2>&1; }

# The check can fail: groff does report a broken page.
broken=$(mktemp)
trap 'rm -f "$broken"' EXIT
printf '.TH X 1\n.SH NAME\nx \\- y\n.BX undefined macro\n' > "$broken"
[ -n "$(lint "$broken")" ] || fail "groff did not report an undefined macro"

for spec in "$@"; do
    name=${spec%%=*}
    program=${name%.*}
    section=${name##*.}
    rest=${spec#*=}
    binary=${rest%:*}
    codes=${rest##*:}
    page="$mandir/$name"
    [ -f "$page" ] || { fail "$page is missing"; continue; }
    title=$(echo "$program" | tr '[:lower:]' '[:upper:]')
    grep -q "^\.TH $title $section " "$page" || fail "$page: its .TH line does not say '$title $section'"
    out=$(lint "$page")
    [ -z "$out" ] || fail "$page: groff warns: $out"
    for section in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" "SEE ALSO"; do
        grep -q "^\.SH \"*$section\"*\$" "$page" || fail "$page has no $section section"
    done
    # Every option of --help, written \-\-option in roff.
    for option in $("$binary" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
        roff=$(echo "$option" | sed 's/-/\\\\-/g')
        grep -q -- "$roff" "$page" || fail "$page does not document $option (from $program --help)"
    done
    # Every exit status: ".B N" entries in the EXIT STATUS section.
    statuses=$(sed -n '/^\.SH EXIT STATUS/,/^\.SH /p' "$page" | sed -n 's/^\.B \([0-9]\)$/\1/p' | tr -d '\n')
    [ "$statuses" = "$codes" ] || fail "$page documents exit statuses '$statuses', expected '$codes'"
done

if [ "$failures" -ne 0 ]; then
    echo "$failures problem(s)" >&2
    exit 1
fi
echo "man pages clean: $*"
