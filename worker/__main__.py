from worker.cli.commands import main

raise SystemExit(main())
