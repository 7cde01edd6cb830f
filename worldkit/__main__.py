"""``python -m worldkit`` runs the command-line interface."""
import sys

from worldkit.cli import main

sys.exit(main())
