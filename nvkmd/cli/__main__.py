import sys

from nvkmd.cli.main import main

sys.exit(main())
