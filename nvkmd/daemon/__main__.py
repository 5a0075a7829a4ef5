import sys

from nvkmd.daemon.main import main

sys.exit(main())
