"""The project's packages are the ones imported, and a namesake is reported clearly."""

import subprocess
import sys
import textwrap

import package_guard


def test_project_packages_carry_the_marker():
    package_guard.ensure_project_packages()
    import datasets

    assert datasets.__file__.startswith(package_guard.PROJECT_ROOT)


def _namesake_datasets(tmp_path):
    """A package named ``datasets`` in ``<tmp_path>/site`` (such as Hugging Face's); returns its folder."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("# stands in for Hugging Face's datasets\n")
    return fake


def _run_python(script, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, **kwargs)


def test_a_shadowing_datasets_package_is_named_in_the_error(tmp_path):
    fake = _namesake_datasets(tmp_path)
    result = _run_python(f"""
        import sys
        sys.path.insert(0, {str(fake.parent)!r})
        import datasets  # the namesake gets imported first, as an installed package would be
        sys.path.insert(0, {package_guard.PROJECT_ROOT!r})
        import package_guard
        try:
            package_guard.ensure_project_packages()
        except package_guard.PackageClashError as err:
            print(err)
            sys.exit(3)
        """)
    assert result.returncode == 3, result.stderr
    assert "datasets" in result.stdout and "Hugging Face" in result.stdout and str(fake) in result.stdout


def test_project_root_wins_over_a_namesake_later_on_sys_path(tmp_path):
    fake = _namesake_datasets(tmp_path)
    result = _run_python(f"""
        import sys
        sys.path[:0] = [{str(fake.parent)!r}]
        sys.path.append({package_guard.PROJECT_ROOT!r})
        import package_guard
        package_guard.ensure_project_packages()
        import datasets
        print(datasets.__file__)
        """, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(package_guard.PROJECT_ROOT)
