from lxsub.cli.main import main

raise SystemExit(main())
