from deploykit.cli import main

raise SystemExit(main())
