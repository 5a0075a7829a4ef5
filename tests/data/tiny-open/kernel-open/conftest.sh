#!/bin/sh
# Probe the kernel the way NVIDIA's conftest.sh does: compile a snippet per
# test against the kernel's headers and record the answer in a header.
CC="$1"; SRC="$2"; OUT="$3"; DIR="$4"; shift 4
mkdir -p "$DIR"
HDR="$DIR/headers.h.tmp"
: > "$HDR"
for t in "$@"; do
    echo " CONFTEST: $t"
    case "$t" in
        kernel_version) echo "#include <generated/utsrelease.h>" > "$DIR/ct.c" ;;
        module_h) echo "#include <linux/module.h>" > "$DIR/ct.c" ;;
        *) echo "#include <linux/$t.h>" > "$DIR/ct.c" ;;
    esac
    if $CC -c -o "$DIR/ct.o" -nostdinc -I"$SRC/include" -I"$OUT/include" \
          -I"$SRC/arch/x86/include" -I"$OUT/arch/x86/include/generated" \
          -include "$SRC/include/linux/kconfig.h" -D__KERNEL__ -fsyntax-only "$DIR/ct.c" 2>/dev/null; then
        echo "#define NV_CONFTEST_$t 1" >> "$HDR"
    else
        echo "#undef NV_CONFTEST_$t" >> "$HDR"
    fi
done
rm -f "$DIR/ct.c" "$DIR/ct.o"
mv "$HDR" "$DIR/headers.h"
