import sys

from nvkmd.agent.main import main

sys.exit(main())
