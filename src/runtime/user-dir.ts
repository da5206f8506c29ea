import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { StartupError } from "./options";
import { writeSettingsTemplate } from "./settings";
import { errorMessage } from "../core/errors";

/** Makes the user dir, with a settings.js to edit and the user's own copy of the flows; a dir that cannot be written names TETHRAL_USER_DIR. */
export function prepareUserDir(userDir: string, flowFile: string, template: string): void {
  try {
    mkdirSync(userDir, { recursive: true });
    mkdirSync(path.dirname(flowFile), { recursive: true });
    // A settings.js to edit, as Node-RED writes one into a new user dir (it sets nothing).
    writeSettingsTemplate(userDir);
    // The user's copy: edits and deploys go there, never into the package.
    if (!existsSync(flowFile)) copyFileSync(template, flowFile);
  } catch (err) {
    throw unwritable(userDir, err);
  }
}

function unwritable(userDir: string, err: unknown): StartupError {
  const reason = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
  return new StartupError(`Cannot prepare the user directory ${userDir} (${reason}): set TETHRAL_USER_DIR to a writable directory`, "TETHRAL_USER_DIR");
}
