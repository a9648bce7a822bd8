import sys

from mlflow_gcp.cli.main import main

sys.exit(main())
