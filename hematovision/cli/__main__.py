from hematovision.cli import main

main()
