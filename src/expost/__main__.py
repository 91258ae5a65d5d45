from expost.entry import main

main()
