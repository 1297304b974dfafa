from quantship.cli import main

raise SystemExit(main())
