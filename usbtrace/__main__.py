from usbtrace.cli import main

main()
