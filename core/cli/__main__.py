from procguard.core.cli import run_main

run_main()
