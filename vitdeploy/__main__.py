from vitdeploy.cli import main

main()
