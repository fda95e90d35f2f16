"""Helpers shared by every layer and by the command-line front doors: atomic files (:mod:`.files`), progress
reporting (:mod:`.progress`), torch.distributed set-up (:mod:`.distributed`) and command-line error handling
(:mod:`.cli_support`)."""
