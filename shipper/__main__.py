from shipper.cli import main

raise SystemExit(main())
