from runq.cli import main

main()
