import sys

from lightning_ft.commands import main

sys.exit(main())
