# SPDX-License-Identifier: GPL-2.0-or-later
# An empty IDT, then an invalid opcode: #UD → #GP → #DF → triple fault.
.include "common.inc"
.code64
start:
    LOAD_IDT 0
    ud2
