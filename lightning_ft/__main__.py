import sys

from lightning_ft.cli import main

sys.exit(main())
