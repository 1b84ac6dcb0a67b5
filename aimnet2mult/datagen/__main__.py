import os
import sys

# one thread unless the caller says otherwise; must be set before numpy/tblite/pyscf load
os.environ.setdefault("OMP_NUM_THREADS", "1")

from .cli import main  # noqa: E402

sys.exit(main())
