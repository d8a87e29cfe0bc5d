"""`vitdeploy doctor`: what this machine can run, what it cannot, and the install line or hardware that would."""

from __future__ import annotations

from vitdeploy.cli.app import app, console, handle_errors, print_json
from vitdeploy.cli.options import JsonFlag


@app.command()
@handle_errors
def doctor(json_output: JsonFlag = False) -> None:
    """Say what this machine offers: the CPU's ISA class and flags, each runtime's devices and the precisions it
    computes natively here; then, for every export and bench variant, whether it can run here and, if not, why and
    what would (an install line or the hardware). bench and export --precision auto read the same record.

    Example: vitdeploy doctor --json
    """
    import vitdeploy
    from vitdeploy.cli.tables import doctor_tables, print_table

    report = vitdeploy.doctor()
    if json_output:
        print_json(report.to_dict())
        return
    for table in doctor_tables(report):
        print_table(console, table)
    console.print(f"recommended: {report.recommendation}", highlight=False, soft_wrap=True)
