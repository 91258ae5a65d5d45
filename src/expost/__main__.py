from expost.cli import main

main()
